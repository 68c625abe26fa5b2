"""Seeds derived per purpose and epoch, so every epoch's randomness is independent of what ran before (resume),
and per rank, so the processes of a multi-GPU job draw different crops, augmentations and drop paths."""

from __future__ import annotations

import hashlib


def derived_seed(seed: int, epoch: int, purpose: str, rank: int = 0) -> int:
    """A 31-bit seed for one purpose in one epoch, independent of what ran before.

    Rank 0 gets the seed of a single process (a one-process job is rank 0 of 1, so its numbers do not change
    with DDP); every other rank of a multi-process job gets its own.
    """
    suffix = f"/rank{rank}" if rank else ""
    digest = hashlib.sha256(f"{seed}/{epoch}/{purpose}{suffix}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
