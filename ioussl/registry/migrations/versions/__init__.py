"""Alembic revisions: 0001 is schema v1 (the baseline), 0002 schema v2."""
