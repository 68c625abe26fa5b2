"""IoU-constrained positive pairs: the exact sampler, the thesis' Algorithm 1, their analysis."""
