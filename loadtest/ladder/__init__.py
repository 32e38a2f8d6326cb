"""The handshake ladder: a WebSocket process's CPU per handshake, one layer added per rung.

`python -m loadtest.ladder` serves the same uvicorn process (app/realtime/server) four ways,
each a rung of `rungs.RUNGS`, and opens the same sockets against each in turn, straight to the
process: what the full chat handshake costs against the bare server under it, in one run.
"""
