"""`ioussl plan`: study files, sweeps, expansion into runs, plan-time data checks, import of results."""
