"""``ioussl predict RUN CASE...``: a completed fine-tune's segmentation of whole cases, as files to look at.

The run and its best checkpoint come from the registry; both are checked before any science is loaded: the
run must be a completed fine-tune, its checkpoint must lie inside its run directory and still have the
SHA-256 recorded when its result was ingested (a checkpoint replaced since would predict something else).
The science (torch, MONAI, nibabel) is imported only then (:mod:`ioussl.science.predict`). Output goes to
``<run dir>/predictions/`` unless another folder is given: ``<case>.nii.gz`` on the case's original grid and
``<case>_z<slice>.png`` pictures (CT, ground truth, prediction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from ioussl import runfiles
from ioussl.config import RunConfig
from ioussl.errors import ConfigError, DataError
from ioussl.registry import repo, unit_of_work
from ioussl.status import RunStatus

PREDICTIONS = "predictions"  # the default output folder inside a run directory
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class PredictOutcome:
    run_id: str
    out_dir: Path
    cases: list[Any]  # science.evaluate.prediction.CasePrediction, one per case


@dataclass(frozen=True)
class _Target:
    run_id: str
    config: RunConfig
    checkpoint: Path
    run_dir: Path


def predict(db: str | None, run_ref: str, cases: Sequence[str], out_dir: Path | None = None,
            slices: Sequence[int] = (), device: str = "auto") -> PredictOutcome:
    """Segment ``cases`` with the run's best checkpoint; write NIfTI files and overlays.

    Raises:
        NotFound: no such run. ConfigError: not a completed fine-tune, a bad option. DataError: a checkpoint
        that moved or changed, an unknown case, an output path that is a file.
    """
    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}; got {device!r}")
    if any(z < 0 for z in slices):
        raise ConfigError(f"--slice counts from 0; got {min(slices)}")
    target = _target(db, run_ref)
    out = out_dir if out_dir is not None else target.run_dir / PREDICTIONS
    if out.exists() and not out.is_dir():
        raise DataError(f"cannot write predictions into {out}: it is a file; give a folder")
    from ioussl.science.predict import predict_run

    written = predict_run(target.config, target.checkpoint, cases, out, slices,
                          cast(Literal["auto", "cuda", "cpu"], device),  # one of DEVICES: checked above
                          caption=f"run {target.run_id}: ")
    return PredictOutcome(target.run_id, out, written)


def _target(db: str | None, run_ref: str) -> _Target:
    from ioussl.plan.expand import job_config_json

    with unit_of_work(db, write=False) as session:
        run = repo.get_run(session, run_ref)
        if run.stage != "finetune":
            raise ConfigError(f"run {run.id} is a pretraining run; predictions come from a fine-tune (its "
                              "segmentation network)")
        if run.status != RunStatus.COMPLETED or run.result is None:
            raise ConfigError(f"run {run.id} is {run.status.value}; predict needs a completed fine-tune (its best "
                              "checkpoint)")
        if run.imported or not run.result.checkpoint_path:
            raise ConfigError(f"run {run.id} has an imported result without a checkpoint: nothing to predict with")
        config = RunConfig.from_json(job_config_json(run.config, run.study.base_dir))
        run_dir, checkpoint = Path(run.run_dir), Path(run.result.checkpoint_path)
        recorded = run.result.checkpoint_sha256
        run_id = run.id
    _check_checkpoint(run_id, run_dir, checkpoint, recorded)
    return _Target(run_id, config, checkpoint, run_dir)


def _check_checkpoint(run_id: str, run_dir: Path, checkpoint: Path, recorded: str | None) -> None:
    """The recorded best checkpoint, inside the run directory, unchanged since its result was ingested."""
    if not checkpoint.resolve().is_relative_to(run_dir.resolve()):
        raise DataError(f"run {run_id}: its recorded checkpoint {checkpoint} lies outside its run directory "
                        f"{run_dir}")
    if not checkpoint.is_file():
        raise DataError(f"run {run_id}: its best checkpoint {checkpoint} is gone")
    if recorded and runfiles.sha256_file(checkpoint) != recorded:
        raise DataError(f"run {run_id}: {checkpoint} has changed since its result was recorded (SHA-256 differs); "
                        "its predictions would not be the reported model's")
