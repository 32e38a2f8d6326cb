"""Load, soak and fault tests of a running chanfleet topology (Locust over WebSockets).

`python -m loadtest.run smoke|soak|failover|rollout` drives Locust headless and writes the
report; `loadtest/locustfile.py` holds the users, `loadtest/client.py` the protocol client and
`loadtest/ledger.py` the loss and duplicate accounting.
"""
