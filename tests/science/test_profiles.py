"""Run profiles: the thesis' Table 4.1 settings and the tiny CPU profile."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ioussl import profiles
from ioussl.errors import ConfigError


def test_thesis_profile_is_table_4_1():
    pre = profiles.build("thesis", "pretrain").validate()
    assert (pre.model.feature_size, pre.data.crop, pre.model.pretrain_drop_path) == (48, 96, 0.1)
    p = pre.pretrain
    assert (p.batch_size, p.epochs, p.base_lr, p.end_lr, p.momentum, p.weight_decay, p.amp) == (
        128, 100, 0.025, 1e-6, 0.9, 1e-5, True
    )  # fmt: skip
    ft = profiles.build("thesis", "finetune").validate().finetune
    assert (ft.batch_size, ft.crops_per_slice, ft.epochs, ft.warmup_epochs, ft.base_lr, ft.end_lr) == (
        32, 2, 225, 10, 1e-3, 5e-5
    )  # fmt: skip
    assert (ft.patience, ft.eval_every, ft.eval_every_epoch_from, ft.sw_overlap) == (20, 10, 90, 0.25)


def test_tiny_profile_is_small_and_valid():
    for stage in ("pretrain", "finetune"):
        cfg = profiles.tiny(stage, store="s", split="x.json").validate()
        assert (cfg.model.feature_size, cfg.data.crop, cfg.runtime.device) == (12, 64, "cpu")
    assert profiles.tiny("finetune").finetune.eval_every == 1  # a DSC exists after 3 epochs


def test_unknown_profile_or_stage_is_refused():
    with pytest.raises(ConfigError, match="unknown profile 'big'"):
        profiles.build("big", "pretrain")
    with pytest.raises(ConfigError, match="stage must be"):
        profiles.build("tiny", "train")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="reversed"):
        profiles.with_sampler(profiles.tiny("pretrain"), i_min=0.6, i_max=0.3)
    assert profiles.with_sampler(profiles.tiny("pretrain"), i_min=0.3, i_max=0.6).sampler.i_max == 0.6


def test_profiles_import_no_torch():
    code = "import sys, ioussl.profiles; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
