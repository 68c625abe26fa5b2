"""CPU throughput of the tiny profile: pretraining pairs/s, fine-tuning crops/s, wall time of both stages.

Builds a small synthetic store (the data layer's synth + preprocess) in a temporary folder, then runs
``run_pretrain`` and ``run_finetune`` with ``profiles.tiny`` exactly as the tests do, plus a bare model-step
measurement without data loading. The last epoch's rates are reported (the first includes warm-up).

    python benchmarks/bench_train_cpu.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ioussl import profiles, runfiles  # noqa: E402
from ioussl.science.data.preprocess import preprocess_dataset  # noqa: E402
from ioussl.science.data.synth import synth_dataset  # noqa: E402
from ioussl.science.train.finetune import run_finetune  # noqa: E402
from ioussl.science.train.pretrain import run_pretrain  # noqa: E402


def bare_steps(steps: int = 5) -> float:
    """Images/s of forward + backward of the tiny SimSiam step (C 12, 64², batch 8 pairs), no data loading."""
    from ioussl.science.models.swin import SimSiam
    from ioussl.science.train.losses import simsiam_loss

    cfg = profiles.tiny("pretrain")
    model = SimSiam(cfg.model, cfg.pretrain)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    views = torch.rand(2, cfg.pretrain.batch_size, 1, 64, 64)
    for i in range(steps + 1):
        if i == 1:
            began = time.perf_counter()
        z1, p1 = model(views[0])
        z2, p2 = model(views[1])
        loss = simsiam_loss(z1, p1, z2, p2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * 2 * cfg.pretrain.batch_size / (time.perf_counter() - began)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth_dataset(root / "nifti", cases=3, unlabelled=1, seed=0, size=96, slices=10)
        preprocess_dataset(root / "nifti", root / "store")
        split = root / "split.json"
        split.write_text(json.dumps({"train": ["SYN_Tr_0001"], "val": ["SYN_Tr_0002"]}))
        began = time.perf_counter()
        pre = run_pretrain(profiles.tiny("pretrain", store=str(root / "store")), root / "pre")
        pre_s = time.perf_counter() - began
        cfg = profiles.tiny("finetune", store=str(root / "store"), split=str(split))
        began = time.perf_counter()
        run_finetune(cfg, root / "ft", Path(pre["checkpoint"]))
        ft_s = time.perf_counter() - began
        pre_lines = list(runfiles.read_jsonl(root / "pre" / runfiles.METRICS))
        ft_lines = list(runfiles.read_jsonl(root / "ft" / runfiles.METRICS))
    numbers = {
        "device": f"cpu ({torch.get_num_threads()} threads)",
        "tiny_pretrain_pairs_per_s": round(pre_lines[-1]["pairs_per_s"], 1),
        "tiny_finetune_crops_per_s": round(ft_lines[-1]["crops_per_s"], 1),
        "tiny_pretrain_wall_s": round(pre_s, 1),
        "tiny_finetune_wall_s": round(ft_s, 1),
        "bare_simsiam_images_per_s": round(bare_steps(), 1),
    }
    for key, value in numbers.items():
        print(f"{key:28s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
