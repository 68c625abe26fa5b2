"""The SQL registry of studies, runs, attempts, results, metric series, provenance and notifications."""

from ioussl.registry.db import Registry, open_registry, opened, resolve_db, unit_of_work

__all__ = ["Registry", "open_registry", "opened", "resolve_db", "unit_of_work"]
