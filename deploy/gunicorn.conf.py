"""gunicorn settings for the HTTP role (deploy/entrypoint.sh http).

uvicorn's worker runs the same ASGI application as the WebSocket processes, so sync views
run in a thread pool
and async views and the channel layer share one event loop per worker (pooled Redis
connections), instead of a new loop per async_to_sync call under plain WSGI.
"""

import os

from prometheus_client import multiprocess

# h11, as before httptools was installed for the WebSocket role's handshakes: uvicorn's httptools
# protocol writes response header names in lowercase, and the HTTP role's responses stay as
# they were (clients reading "Retry-After" by its case keep working).
worker_class = "uvicorn_worker.UvicornH11Worker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# In-flight requests get this long to finish on SIGTERM (Kubernetes sends it after preStop).
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "25"))
timeout = int(os.environ.get("WORKER_TIMEOUT", "30"))
# Longer than nginx's upstream keepalive_timeout (60 s), so nginx closes idle ones first.
keepalive = 75
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# gunicorn's control socket defaults to $HOME, which the image's user has none of (a read-only
# /nonexistent): every start logged an error. Nothing here uses it.
control_socket_disable = True


def child_exit(server, worker):
    """Tell prometheus-client a worker died, so its live gauges stop being summed."""
    multiprocess.mark_process_dead(worker.pid)
