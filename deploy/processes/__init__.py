"""Redis, Sentinel and nginx processes for the local topology, the tests and the benchmark.

`children` runs any program as a child process by PID; `redis_nodes` and `nginx` own each
server's binary, config, command line and start, wait and stop.
"""
