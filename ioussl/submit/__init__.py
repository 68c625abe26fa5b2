"""`ioussl submit`, `retry`, `cancel`: units of work, the submission service, the job entry point."""
