"""The SQL registry of studies, runs, attempts, results, metric series and provenance."""

from ioussl.orchestration.registry.db import Registry, open_registry, resolve_db

__all__ = ["Registry", "open_registry", "resolve_db"]
