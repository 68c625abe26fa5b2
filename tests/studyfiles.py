"""The smallest study file the orchestration tests plan: one interval, no GPUs, five-minute jobs."""

from __future__ import annotations

from collections.abc import Sequence


def tiny_study(
    name: str, *, pretrain_seeds: Sequence[int] = (1,), finetune_seeds: Sequence[int] = (1, 2),
    cluster: str | None = None,
) -> str:
    """A study with one interval ([0.3, 0.6]) over a store called ``store`` and runs under ``runs``."""
    cluster_line = f'cluster = "{cluster}"\n' if cluster else ""
    return f"""
[study]
name = "{name}"
runs_dir = "runs"
{cluster_line}[data]
store = "store"
crop = 64
[model]
feature_size = 12
[pretrain]
seeds = {list(pretrain_seeds)}
[finetune]
seeds = {list(finetune_seeds)}
[[intervals]]
i_min = 0.3
i_max = 0.6
[resources.pretrain]
gpus = 0
time_min = 5
[resources.finetune]
gpus = 0
time_min = 5
"""
