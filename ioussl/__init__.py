"""ioussl: IoU-based positives for SimSiam on CT, as a reproducible SLURM study."""

__version__ = "0.1.0"
