"""Alembic migrations of the retirement database (run by :func:`retirement.db.migrate`, never by hand)."""
