"""The schema of what a job writes (result.json v2, metrics.jsonl, events.jsonl), checked before ingest.

Pure functions on parsed JSON. Each raises :class:`runfiles.RunFileError` with one line naming the file
and what is wrong ("result.json: dsc 1.7 is outside [0, 1]"); what passes holds only values the registry
can store on both backends (finite floats, integers that fit, strings that fit their columns).

result.json v2 (written by ``entrypoint.run_stage``): see HELPERS' contract and docs/architecture.md.
Unknown extra keys are kept in the stored payload but never read into a column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any, TypeGuard

from ioussl.runfiles import RESULT, RunFileError

MAX_INT = 2**31 - 1  # INTEGER on PostgreSQL
MAX_EPOCH_TIME = 1e11  # seconds since 1970: year 5138; anything later is not a time
HEX64 = re.compile(r"[0-9a-f]{64}")
FLARE_PARTS = ("val", "test")


def _fail(why: str, name: str = RESULT) -> RunFileError:
    return RunFileError(name, why)


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def to_float(value: int | float) -> float:
    """float(value), with an integer too large for a float as infinity (so range checks refuse it)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def unit(payload: Mapping[str, Any], key: str, where: str, *, nullable: bool = False) -> float | None:
    """A score in [0, 1] (finite)."""
    value = payload.get(key)
    if value is None:
        if nullable:
            return None
        raise _fail(f"{where}{key} is missing" if key not in payload else f"{where}{key} is null")
    if not is_number(value):
        raise _fail(f"{where}{key} must be a number, got {_show(value)}")
    value = to_float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise _fail(f"{where}{key} {_show(value)} is outside [0, 1]")
    return value


def finite(payload: Mapping[str, Any], key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    value = payload.get(key)
    if not is_number(value):
        raise _fail(f"{key} must be a number, got {_show(value)}")
    value = to_float(value)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise _fail(f"{key} {_show(value)} is outside [{lo:g}, {hi:g}]")
    return value


def count(payload: Mapping[str, Any], key: str, lo: int = 0, *, name: str = RESULT) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{key} must be an integer, got {_show(value)}", name)
    if not lo <= value <= MAX_INT:
        raise _fail(f"{key} {_show(value)} is outside [{lo}, {MAX_INT}]", name)
    return value


def text(payload: Mapping[str, Any], key: str, limit: int, *, nullable: bool = False) -> str | None:
    value = payload.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise _fail(f"{key} must be a string, got {_show(value)}")
    if len(value) > limit or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _fail(f"{key} must be at most {limit} printable characters")
    return value


def check_finite_everywhere(value: Any, where: str = "") -> None:
    """No NaN or infinity anywhere in the payload: PostgreSQL's JSON refuses them, and they are not data."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(f"{where or 'a value'} is {_show(value)}, not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite_everywhere(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_finite_everywhere(item, f"{where}[{index}]")


def check_result(payload: Mapping[str, Any], *, stage: str, config_hashes: Collection[str],
                 run_hashes: Collection[str] | None = None) -> dict[str, Any]:
    """Validate a result.json against the run it claims to belong to; return the Result column values.

    Args:
        payload: the parsed result.json.
        stage: the run's stage (pretrain or finetune).
        config_hashes: the hashes the run's own config may have (as planned, and as handed to the job).
        run_hashes: the identities the run may have (its config with its parent's identity); None: not checked.
            A fine-tune's config does not name its pretrain, so only this tells apart the results of two
            fine-tunes with the same settings on different encoders (or none).

    Raises:
        RunFileError: the first thing that is wrong, in one line.
    """
    check_finite_everywhere(payload)
    if payload.get("stage") != stage:
        raise _fail(f"stage is {_show(payload.get('stage'))} but this run is a {stage}")
    for key in ("run_hash", "config_hash"):
        if not (isinstance(payload.get(key), str) and HEX64.fullmatch(payload[key])):
            raise _fail(f"{key} must be 64 hex digits, got {_show(payload.get(key))}")
    if payload["config_hash"] not in config_hashes:
        raise _fail(f"config_hash {payload['config_hash'][:12]}... belongs to another config than this run's")
    if run_hashes is not None and payload["run_hash"] not in run_hashes:
        raise _fail(f"run_hash {payload['run_hash'][:12]}... is not this run's identity (a result of another run, "
                    "e.g. a fine-tune of another encoder with the same settings)")
    columns: dict[str, Any] = {
        "checkpoint_path": text(payload, "checkpoint", 4096),
        "checkpoint_sha256": _sha256(payload),
    }
    epochs = count(payload, "epochs", 1 if stage == "finetune" else 0)  # a fine-tune's best epoch is one of them
    count(payload, "steps")
    finite(payload, "finished_at", 0.0, MAX_EPOCH_TIME)
    check_provenance(payload.get("provenance"))
    if stage == "pretrain":
        _check_pretrain(payload)
        return columns
    return {**columns, **_finetune_columns(payload, epochs)}


def _sha256(payload: Mapping[str, Any]) -> str:
    value = payload.get("checkpoint_sha256")
    if not (isinstance(value, str) and HEX64.fullmatch(value)):
        raise _fail(f"checkpoint_sha256 must be 64 hex digits, got {_show(value)}")
    return value


def _check_pretrain(payload: Mapping[str, Any]) -> None:
    finite(payload, "final_loss")
    finite(payload, "final_collapse", 0.0)
    unit(payload, "final_fallback_rate", "")
    count(payload, "steps_per_epoch", 1)


def _finetune_columns(payload: Mapping[str, Any], epochs: int) -> dict[str, Any]:
    best_epoch = count(payload, "best_epoch")
    if best_epoch >= epochs:
        raise _fail(f"best_epoch {best_epoch} is not below epochs {epochs}")
    columns: dict[str, Any] = {
        "dsc": unit(payload, "dsc", ""),
        "dsc_3d": unit(payload, "dsc_3d", "", nullable=True),
        "per_case": _per_case(payload.get("per_case"), "per_case"),
        "per_organ": _scores(payload.get("per_organ"), "per_organ"),
        "best_epoch": best_epoch,
    }
    if payload.get("test") is not None:
        test = _section(payload["test"], "test")
        columns["test_dsc"] = unit(test, "dsc", "test.")
        columns["test_dsc_3d"] = unit(test, "dsc_3d", "test.", nullable=True)
        _per_case(test.get("per_case", {}), "test.per_case")
        _scores(test.get("per_organ", {}), "test.per_organ")
        if "slices" in test:
            count(test, "slices")
    if payload.get("flare") is not None:
        columns.update(_flare(_section(payload["flare"], "flare")))
    return columns


def _flare(flare: Mapping[str, Any]) -> dict[str, Any]:
    if flare.get("part") not in FLARE_PARTS:
        raise _fail(f"flare.part must be 'val' or 'test', got {_show(flare.get('part'))}")
    organs = _section(flare.get("per_organ", {}), "flare.per_organ")
    for organ, pair in organs.items():
        _pair(pair, f"flare.per_organ.{organ}")
    for case, scores in _section(flare.get("per_case", {}), "flare.per_case").items():
        for organ, pair in _section(scores, f"flare.per_case.{case}").items():
            _pair(pair, f"flare.per_case.{case}.{organ}")
    return {"flare_part": flare["part"], "flare_dsc": unit(flare, "dsc", "flare."),
            "flare_nsd": unit(flare, "nsd", "flare.")}


def _pair(pair: Any, where: str) -> None:
    section = _section(pair, where)
    for key in ("dsc", "nsd"):
        unit(section, key, f"{where}.", nullable=True)


def _section(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{where} must be an object, got {_show(value)}")
    return value


def _scores(value: Any, where: str) -> dict[str, float | None]:
    """{organ: score in [0, 1] or null}."""
    section = _section(value, where)
    for key in section:
        unit(section, key, f"{where}.", nullable=True)
    return dict(section)


def _per_case(value: Any, where: str) -> dict[str, dict[str, float | None]]:
    section = _section(value, where)
    return {case: _scores(scores, f"{where}.{case}") for case, scores in section.items()}


def check_provenance(value: Any) -> dict[str, Any]:
    """The provenance a job records: strings that fit their columns, or nothing."""
    section = dict(_section(value, "provenance"))
    text(section, "git_commit", 64, nullable=True)
    if section.get("git_dirty") is not None and not isinstance(section["git_dirty"], bool):
        raise _fail(f"provenance.git_dirty must be true, false or null, got {_show(section['git_dirty'])}")
    text(section, "host", 255, nullable=True)
    device = section.get("device")
    if device is not None:
        text(_section(device, "provenance.device"), "device_name", 255, nullable=True)
    if section.get("versions") is not None:
        _section(section["versions"], "provenance.versions")
    return section


def check_metric_line(line: Mapping[str, Any], where: str) -> list[tuple[str, int, int | None, float]]:
    """(name, epoch, step, value) for each finite number of one metrics.jsonl line; [] without an epoch.

    A non-finite value (a diverging loss logged before the job failed) is not stored; an epoch or step that
    is not a sane integer, or a name that does not fit, makes the file invalid.
    """
    if "epoch" not in line:
        return []
    epoch = count(line, "epoch", name=where)
    step = count(line, "step", name=where) if line.get("step") is not None else None
    points = []
    for name, value in line.items():
        if name in INDEX_KEYS or not is_number(value):
            continue
        if len(name) > 64 or not name.isprintable():
            raise RunFileError(where, f"metric name {_show(name)} is not a printable name of at most 64 characters")
        if math.isfinite(to_float(value)):
            points.append((name, epoch, step, to_float(value)))
    return points


# Keys of a metrics.jsonl line that index it rather than measure something.
INDEX_KEYS = frozenset({"epoch", "step", "t", "time", "stage"})


def check_event(event: Mapping[str, Any], where: str) -> None:
    """One events.jsonl line: an ``event`` name and, when given, a time ``t`` that is a real moment."""
    name = event.get("event")
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise RunFileError(where, f"event must be a name of at most 64 characters, got {_show(name)}")
    if "t" in event:
        t = event["t"]
        if not is_number(t) or not 0 <= to_float(t) < MAX_EPOCH_TIME:
            raise RunFileError(where, f"t {_show(t)} is not a time (seconds since 1970)")


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
