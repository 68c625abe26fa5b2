"""Schedulers behind one protocol: each backend owns its states, dependency syntax, log paths and resources."""
