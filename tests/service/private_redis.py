"""The private redis-server helper lives in scoter/testing.py (the benchmarks use it too)."""

from scoter.testing import redis_server, redis_server_binary

__all__ = ["redis_server", "redis_server_binary"]
