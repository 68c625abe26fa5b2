"""The 2D Swin UNETR (Hatamizadeh et al. 2022) and the SimSiam network built on exactly its encoder.

Pretraining and fine-tuning share one architecture: the SimSiam backbone is ``SwinUNETR(...).swinViT`` itself,
so the pretrained state dict loads into the segmentation network's ``swinViT`` one to one, key for key
(thesis protocol notes §3 and §4).
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from ioussl.config import ModelConfig, PretrainConfig
from ioussl.science.models.heads import PredictionHead, ProjectionHead


def build_swin_unetr(model: ModelConfig, drop_path: float) -> nn.Module:
    """The 2D segmentation network of the thesis: 1 input channel, ``model.out_channels`` classes.

    Args:
        model: architecture settings (feature size C, depths, heads, classes).
        drop_path: stochastic-depth rate (0.1 when pretraining, 0 when fine-tuning in the thesis).
    """
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(
        in_channels=1,
        out_channels=model.out_channels,
        feature_size=model.feature_size,
        depths=model.depths,
        num_heads=model.num_heads,
        dropout_path_rate=drop_path,
        use_checkpoint=model.use_checkpoint,
        spatial_dims=model.spatial_dims,  # 2: slices (the thesis); 3: volumes (issue 20)
        normalize=True,
    )


def encoder_dim(model: ModelConfig) -> int:
    """Channels of the deepest Swin stage: 16 C (768 for C = 48)."""
    return 16 * model.feature_size


class SwinEncoder(nn.Module):
    """The ``swinViT`` of a 2D Swin UNETR, deepest stage averaged over space: ``[N,1,H,W] -> [N,16C]``."""

    def __init__(self, model: ModelConfig, drop_path: float) -> None:
        super().__init__()
        # Take the module out of a full SwinUNETR so its construction (and key names) is exactly the
        # fine-tuning network's, whatever MONAI version builds it.
        self.swin = cast(nn.Module, build_swin_unetr(model, drop_path).swinViT)

    def forward(self, x: Tensor) -> Tensor:
        deepest = self.swin(x, normalize=True)[4]  # [N, 16C, H/32, W/32]
        return deepest.mean(dim=tuple(range(2, deepest.ndim)))  # over H, W (and D in 3D)


class SimSiam(nn.Module):
    """Encoder f, projection g and predictor h; ``forward`` returns ``(stop_grad(z), p)`` for one view."""

    def __init__(self, model: ModelConfig, pretrain: PretrainConfig) -> None:
        super().__init__()
        self.backbone = SwinEncoder(model, model.pretrain_drop_path)
        self.projection = ProjectionHead(encoder_dim(model), pretrain.proj_dim, pretrain.proj_dim)
        self.prediction = PredictionHead(pretrain.proj_dim, pretrain.pred_hidden_dim)

    def forward(self, view: Tensor) -> tuple[Tensor, Tensor]:
        z = self.projection(self.backbone(view))  # [N, D]
        p = self.prediction(z)  # [N, D]
        # The stop-gradient of SimSiam: the target branch z is a constant for the loss.
        return z.detach(), p

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The backbone's weights under the key names of ``SwinUNETR.swinViT``."""
        return {key: value.detach().clone() for key, value in self.backbone.swin.state_dict().items()}
