"""SimSiam projection and prediction heads (Chen & He 2021, "Exploring Simple Siamese Representation").

Shapes follow the thesis' reference code, which used lightly's SimSiam heads (thesis protocol notes §3):
projection 16C -> 2048 -> 2048 -> 2048, every linear bias-free and followed by batch norm, ReLU on all but
the last, the last batch norm without affine parameters; prediction 2048 -> 512 (BN, ReLU) -> 2048 with bias.
"""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """Three-layer MLP g(.) of SimSiam: ``[N, in_dim] -> [N, out_dim]``."""

    def __init__(self, in_dim: int, out_dim: int = 2048, hidden_dim: int = 2048) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
            # No affine: the paper's output BN only standardises z, it must not learn to rescale it.
            nn.BatchNorm1d(out_dim, affine=False),
        )


class PredictionHead(nn.Sequential):
    """Bottleneck MLP h(.) of SimSiam: ``[N, dim] -> [N, hidden] -> [N, dim]``."""

    def __init__(self, dim: int = 2048, hidden_dim: int = 512) -> None:
        super().__init__(
            nn.Linear(dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, dim),
        )
