"""Data, sampler, transforms, models, losses, metrics and training loops. Never imports orchestration."""
