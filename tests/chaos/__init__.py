"""Chaos tests: the real stack (PostgreSQL, a Prefect server on it, two process workers) under failures."""
