"""The WebSocket process: uvicorn set up for fan-out (the `ws` role), and daphne's extras."""
