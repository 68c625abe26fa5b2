"""`ioussl status`, `logs`: sync with the scheduler, classify (pure), ingest run files, live progress, alerts."""
