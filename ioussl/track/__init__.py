"""`ioussl status`, `logs`: sync with the scheduler (one query), classify (pure), ingest run files, live progress, alerts."""
