"""Redis, Sentinel, nginx and PostgreSQL processes for the local topology, the tests and the
benchmark.

`children` runs any program as a child process by PID; `redis_nodes`, `nginx` and `postgres`
own each server's binary, config, command line and start, wait and stop; `netns` puts processes in
network namespaces on a bridge of their own, for the partition drill.
"""
