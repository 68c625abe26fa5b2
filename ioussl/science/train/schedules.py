"""Learning-rate schedule of Table 4.1, a pure function of the global step (no torch).

Pretraining: per-iteration cosine from 0.025 to 1e-6 without warm-up. Fine-tuning: 10 epochs of linear
warm-up from 0 (step 0 has lr 0) to 1e-3, then cosine to 5e-5 over the remaining epochs. Both are set every
iteration and span the configured epochs, ignoring early stopping, as the reference code does
(thesis protocol notes §3, §4).
"""

from __future__ import annotations

import math


def cosine_lr(step: int, total_steps: int, base_lr: float, end_lr: float, warmup_steps: int = 0) -> float:
    """Linear warm-up from 0, then lr_i = end + (base - end)(1 + cos(pi i / N)) / 2.

    Args:
        step: 0-based global iteration.
        total_steps: iterations of the whole run (epochs x steps per epoch), warm-up included.
        base_lr: peak learning rate.
        end_lr: value approached at the last step.
        warmup_steps: iterations of linear warm-up; i counts from the end of the warm-up and N is
            ``total_steps - warmup_steps``.
    """
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(step - warmup_steps, span) / span
    return end_lr + 0.5 * (base_lr - end_lr) * (1.0 + math.cos(math.pi * progress))
