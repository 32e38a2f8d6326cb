"""The real-time machinery under app/chat's consumers; docs/architecture.md draws it.

server/     the WebSocket process: uvicorn's process set-up, and what daphne needs
consumers/  the consumer base, the handshake in front of it, the process's live consumers and
            their heartbeat, and the fast delivery path's interface (delivery.py)
layer/      Redis: the failover-proof channel layer, its retry policy, the shared store
            (presence, rate-limit counters) and the rate limits
ops/        what operators and probes see: health, readiness, metrics, drain and status
            (the loopback-only internal endpoints), the canary and the process's services
adapters/   every use of a library's private API, one module per library, version-pinned
"""
