"""The demo's pretrainings end to end on the CPU: each pretraining run of jobs/demo.toml as the local executor
runs it (a fresh Python process calling ``entrypoint.run_stage`` with ``IOUSSL_CPUS_PER_TASK=1``), timed from
process start to exit, on the demo's synthetic store (``ioussl demo``'s data settings).

Variants, interleaved run by run so that load drift on a shared machine hits all alike:
- ``device``: this tree, ``data.augment_on = "device"`` (the default);
- ``loader``: this tree, ``data.augment_on = "loader"`` (per-sample MONAI augmentations in the loader);
- ``before``: another checkout given with ``--before DIR`` (e.g. ``git archive 40baa52 | tar -x -C DIR``),
  whose configs have no ``augment_on``; it reads a store that checkout's own preprocessing writes from the
  same synthetic CT (the store format has changed since).

    python benchmarks/bench_demo_pretrain.py [--before DIR] [--runs 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ioussl import runfiles  # noqa: E402

CHILD = "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; " \
        "from ioussl.submit.entrypoint import run_stage; run_stage(Path(sys.argv[2]))"  # fmt: skip


def demo_data(root: Path, crop: int) -> Path:
    """The demo's synthetic CT and store (the same settings as ``ioussl demo``)."""
    from ioussl.demo import DemoSettings
    from ioussl.science.data.preprocess import PreprocessSettings, preprocess_dataset
    from ioussl.science.data.synth import synth_dataset

    settings = DemoSettings()
    synth_dataset(root / "raw", settings.labelled, settings.unlabelled, seed=settings.seed, size=settings.size,
                  slices=settings.slices, spacing_mm=settings.spacing_mm)  # fmt: skip
    preprocess_dataset(root / "raw", root / "store", PreprocessSettings(min_size=crop), workers=2)
    return root / "store"


def before_store(checkout: Path, root: Path, crop: int) -> Path:
    """The same synthetic CT preprocessed by ``checkout``'s own code (in its own process), for its runs."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
            "from ioussl.science.data.preprocess import PreprocessSettings, preprocess_dataset; "
            "preprocess_dataset(Path(sys.argv[2]), Path(sys.argv[3]), PreprocessSettings(min_size=int(sys.argv[4])), "
            "workers=1)")
    subprocess.run([sys.executable, "-c", code, str(checkout), str(root / "raw"), str(root / "store-before"),
                    str(crop)], check=True, capture_output=True)  # fmt: skip
    return root / "store-before"


def pretrain_configs(store: Path) -> list[dict]:
    """The demo study's pretraining configs, as planned, with the store made absolute (as jobs get it)."""
    from ioussl.plan.expand import expand_grid
    from ioussl.plan.study import load_study

    spec = load_study(REPO / "jobs" / "demo.toml")
    configs = []
    for planned in expand_grid(spec):
        if planned.stage == "pretrain":
            cfg = planned.config
            configs.append(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, store=str(store))).to_dict())
    return configs


def run_job(repo: Path, config: dict, run_dir: Path) -> dict[str, float]:
    """One pretraining job in a fresh process; wall seconds and the training loop's own seconds."""
    run_dir.mkdir(parents=True)
    (run_dir / runfiles.CONFIG).write_text(json.dumps(config, sort_keys=True))
    env = {**os.environ, "IOUSSL_CPUS_PER_TASK": "1"}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(repo), str(run_dir)], env=env, capture_output=True,
                          text=True)  # fmt: skip
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"job failed in {run_dir}:\n{done.stderr[-2000:]}")
    lines = list(runfiles.read_jsonl(run_dir / runfiles.METRICS))
    return {"wall_s": wall, "train_s": sum(line["seconds"] for line in lines)}


def variant_config(config: dict, variant: str, store_before: Path | None) -> dict:
    data = dict(config["data"])
    if variant == "before":
        data.pop("augment_on")
        data["store"] = str(store_before)
    else:
        data["augment_on"] = variant
    return {**config, "data": data}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=None, help="a checkout of the code to compare with")
    parser.add_argument("--runs", type=int, default=6, help="how many of the demo's pretrainings (6 in all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    variants = {"device": REPO, "loader": REPO, **({"before": args.before.resolve()} if args.before else {})}
    load = os.getloadavg()[0]
    times: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        store = demo_data(root, crop=64)
        store_before = before_store(variants["before"], root, crop=64) if "before" in variants else None
        configs = pretrain_configs(store)[: args.runs]
        for i, config in enumerate(configs):
            for variant, repo in variants.items():
                run_dir = root / f"run{i}-{variant}"
                times[variant].append(run_job(repo, variant_config(config, variant, store_before), run_dir))
    print(f"the demo's pretrainings ({len(configs)} runs of jobs/demo.toml), one fresh process each, 1 CPU thread; "
          f"load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at the end")  # fmt: skip
    summary = {}
    for variant, rows in times.items():
        wall, train = sum(r["wall_s"] for r in rows), sum(r["train_s"] for r in rows)
        median = statistics.median(r["wall_s"] for r in rows)
        summary[variant] = {"wall_s": wall, "train_s": train, "median_run_s": median}
        print(f"  {variant:7s} {wall:7.1f} s in all, median {median:5.2f} s per run, "
              f"of which training loops {train:6.1f} s")  # fmt: skip
    if "before" in summary:
        for variant in ("device", "loader"):
            ratio = summary["before"]["wall_s"] / summary[variant]["wall_s"]
            print(f"  before / {variant}: {ratio:.2f}x faster end to end")
    if args.json:
        args.json.write_text(json.dumps({"load_average": load, "runs": len(configs), **summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
