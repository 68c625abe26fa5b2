"""Registry, planning, submission, status sync and reports. Never imports torch at import time."""
