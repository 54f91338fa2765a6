"""Fake upstreams for tests and the benchmark: small ASGI apps speaking real wire formats."""
