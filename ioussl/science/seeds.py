"""Seeds derived per purpose and epoch, so every epoch's randomness is independent of what ran before (resume)."""

from __future__ import annotations

import hashlib


def derived_seed(seed: int, epoch: int, purpose: str) -> int:
    """A 31-bit seed for one purpose in one epoch, independent of what ran before."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
