"""Training jobs: data loaders, loops, optimisers, schedules, checkpoints, encoder transfer."""
