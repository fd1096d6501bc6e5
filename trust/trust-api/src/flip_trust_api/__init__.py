"""FLIP trust agent (flip-trust-api): the one process in a trust that talks to the hub.

It dials out only: it leases tasks, runs them against the trust's own services, keeps unacknowledged
results in a durable outbox, heartbeats with a health snapshot, and serves nothing but ``/health``.
"""

__version__ = "0.1.0"
