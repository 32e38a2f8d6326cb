"""The consumer framework: the base every route builds on, its handshake, heartbeat and delivery."""
