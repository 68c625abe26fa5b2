"""Alembic migrations of the registry (shipped with the package so an installed ioussl can upgrade)."""
