"""Study files (TOML): the whole grid in one file, validated before anything is written.

A study names its IoU intervals, pretrain and fine-tune seeds, the no-pretraining baseline, the shared
hyperparameters (defaults: Table 4.1) and per-stage resources; the site-specific SLURM part (partition,
account, qos, ...) lives in a cluster profile that the study points to, so one study runs on many sites.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ioussl import jobtext as jobscript
from ioussl.config import (
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    RuntimeConfig,
    SamplerConfig,
    from_dict,
    validate_interval,
    validate_model,
)
from ioussl.errors import ConfigError
from ioussl.plan.sweep import Sweep, parse_sweep

STUDY_SECTIONS: tuple[str, ...] = ("study", "data", "model", "runtime", "sampler", "pretrain", "finetune", "intervals",
                  "resources", "slurm", "sweep", "notify")
STUDY_KEYS = ("name", "description", "cluster", "runs_dir")
INTERVAL_KEYS = ("name", "i_min", "i_max", "random_crop")
RESOURCE_KEYS = ("gpus", "cpus_per_task", "mem_gb", "time_min", "nodes", "tasks_per_node", "additional",
                 "max_running", "signal_delay_s", "max_requeues")
SLURM_KEYS = ("partition", "account", "qos", "constraint", "gres", "gpus_per_node", "tasks_per_node", "exclude",
              "setup", "additional", "max_parallel")
NOTIFY_KEYS = ("webhook",)
STUDY_SECTIONS += ("report",)  # how the study is reported and planned for power (issue 21): no run's identity
REPORT_METRICS = ("dsc", "flare_dsc", "flare_nsd")  # report/tables.py METRICS has the same keys (tested)
REPORT_TESTS = ("welch", "cases", "wilcoxon")  # report/comparison.py TESTS
MAX_SEED = 2**32  # seeds lie in [0, 2**32): what numpy and torch accept
MAX_LABEL = 64  # runs.group


@dataclass(frozen=True)
class Interval:
    i_min: float
    i_max: float
    random_crop: bool = False
    name: str | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        text = f"[{self.i_min:g}, {self.i_max:g}]"
        return f"random crop {text}" if self.random_crop else text


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    path: Path | None
    base_dir: Path  # relative paths in the study (data, runs_dir, cluster) are relative to this
    runs_dir: str
    data: DataConfig
    model: ModelConfig
    runtime: RuntimeConfig
    sampler: SamplerConfig
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    intervals: tuple[Interval, ...]
    pretrain_seeds: tuple[int, ...]
    finetune_seeds: tuple[int, ...]
    baseline_seeds: tuple[int, ...]
    resources: dict[str, dict[str, Any]]  # stage -> merged resources + slurm profile
    sweep: Sweep = field(default_factory=Sweep)  # [sweep] axes; empty: the thesis grid
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    notify: dict[str, Any] = field(default_factory=dict)  # the cluster profile's [notify] (webhook alerts)
    report: dict[str, Any] = field(default_factory=dict)  # [report]: metric, test, sd, baseline_sd (checked)
    overrides: tuple[str, ...] = ()  # `plan grid -s key=value` applied over the file (kept for provenance)

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.base_dir / path


def load_study(path: str | Path, base_dir: str | Path | None = None, overrides: Sequence[str] = ()) -> StudySpec:
    """Read and validate a study file, with ``overrides`` ("pretrain.epochs=50", as ``plan grid -s``) applied
    before validation, so they are checked exactly as the file is. Raises ConfigError with one clear line."""
    path = Path(path)
    raw = apply_overrides(_read_toml(path), overrides)
    base = Path(base_dir) if base_dir is not None else path.resolve().parent
    spec = parse_study(raw, path=path, base_dir=base)
    return dataclasses.replace(spec, overrides=tuple(overrides)) if overrides else spec


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the parsed study with each ``dotted.key=value`` set; the value is read as a TOML value
    (``50``, ``0.1``, ``true``, ``[64, 96]``, ``"text"``), or taken as plain text when it is not one.
    ``sweep.<setting>=[...]`` sets a sweep axis (whose name holds dots itself)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        parts = key.split(".", 1) if key.startswith("sweep.") else key.split(".")
        if not sep or not all(part.strip() for part in parts):
            raise ConfigError(f"-s {item!r}: expected key=value with a dotted key, e.g. -s pretrain.epochs=50")
        jobscript.check_text(key, f"-s {key}")
        value = _override_value(text.strip(), key)
        table = raw
        for i, part in enumerate(parts[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"-s {key}: {'.'.join(parts[:i + 1])} is a value, not a table")
        table[parts[-1]] = value
    return raw


def _override_value(text: str, key: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        jobscript.check_text(text, f"-s {key}")
        return text
    except RecursionError:
        raise ConfigError(f"-s {key}: the value is nested too deeply") from None


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except RecursionError:  # tables or inline tables nested thousands deep
        raise ConfigError(f"{path}: malformed TOML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{path}: malformed TOML: {exc}"[:300]) from None


def parse_study(raw: dict[str, Any], path: Path | None, base_dir: Path) -> StudySpec:
    where = str(path) if path else "study"
    _check_keys(raw, STUDY_SECTIONS, where)
    head = raw.get("study", {})
    name, runs_dir = _name_and_runs_dir(head, where)
    pretrain_raw = dict(raw.get("pretrain", {}))
    finetune_raw = dict(raw.get("finetune", {}))
    pretrain_seeds = _seeds(pretrain_raw.pop("seeds", []), f"{where} [pretrain].seeds")
    finetune_seeds = _seeds(finetune_raw.pop("seeds", []), f"{where} [finetune].seeds")
    baseline_seeds = _seeds(finetune_raw.pop("baseline_seeds", []), f"{where} [finetune].baseline_seeds")
    data = from_dict(DataConfig, raw.get("data", {}), f"{where} [data]")
    jobscript.check_path(data.store, f"{where} [data].store")
    if data.split is not None:
        jobscript.check_path(data.split, f"{where} [data].split")
    model = from_dict(ModelConfig, raw.get("model", {}), f"{where} [model]")
    validate_model(model, data.crop)
    intervals = _intervals(raw.get("intervals", []), where)
    if intervals and not pretrain_seeds:
        raise ConfigError(f"{where}: intervals are given but [pretrain].seeds is empty")
    if intervals and not finetune_seeds:
        raise ConfigError(f"{where}: intervals are given but [finetune].seeds is empty")
    if not intervals and not baseline_seeds:
        raise ConfigError(f"{where}: the study is empty (no [[intervals]] and no [finetune].baseline_seeds)")
    cluster, notify = _cluster_profile(head.get("cluster"), base_dir, where)
    # Alerts: the study's own [notify] over its cluster profile's over the user's config file.
    notify = {**_user_notify(), **notify, **_notify(raw.get("notify", {}), f"{where} [notify]")}
    cluster.update(_checked(raw.get("slurm", {}), SLURM_KEYS, f"{where} [slurm]"))
    return StudySpec(
        name=name,
        description=str(head.get("description", "")),
        path=path,
        base_dir=base_dir,
        runs_dir=runs_dir,
        data=data,
        model=model,
        runtime=from_dict(RuntimeConfig, raw.get("runtime", {}), f"{where} [runtime]"),
        sampler=from_dict(SamplerConfig, raw.get("sampler", {}), f"{where} [sampler]"),
        pretrain=from_dict(PretrainConfig, pretrain_raw, f"{where} [pretrain]"),
        finetune=from_dict(FinetuneConfig, finetune_raw, f"{where} [finetune]"),
        intervals=intervals,
        pretrain_seeds=pretrain_seeds,
        finetune_seeds=finetune_seeds,
        baseline_seeds=baseline_seeds,
        resources=_resources(raw.get("resources", {}), cluster, where),
        sweep=parse_sweep(raw.get("sweep"), f"{where} [sweep]"),
        raw=raw,
        notify=notify,
        report=parse_report(raw.get("report", {}), f"{where} [report]"),
    )


def parse_report(table: Any, where: str) -> dict[str, Any]:
    """[report]: ``metric`` and ``test`` (the report's defaults for this study), ``sd`` and ``baseline_sd``
    (the standard deviation of a pretraining's mean score and of a baseline run's, for the dry run's power)."""
    section = _checked(table, ("metric", "test", "sd", "baseline_sd"), where)
    for key, valid in (("metric", REPORT_METRICS), ("test", REPORT_TESTS)):
        if key in section and section[key] not in valid:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(valid)}, got {_short(section[key])}")
    for key in ("sd", "baseline_sd"):
        value = section.get(key)
        if key in section and (isinstance(value, bool) or not isinstance(value, int | float)
                               or not 0 < value < 1):
            raise ConfigError(f"{where}: {key} must be a number in (0, 1), got {_short(value)}")
    return section


def _name_and_runs_dir(head: Any, where: str) -> tuple[str, str]:
    """[study] name (an identifier) and runs_dir (a path fit for a job script)."""
    _check_keys(head, STUDY_KEYS, f"{where} [study]")
    name = head.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: [study] needs a non-empty name")
    name = jobscript.check_study_name(name, where)
    return name, jobscript.check_path(head.get("runs_dir", f"runs/{name}"), f"{where} [study].runs_dir")


def _check_keys(table: Any, valid: tuple[str, ...], where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")


def _checked(table: Any, valid: tuple[str, ...], where: str) -> dict[str, Any]:
    _check_keys(table, valid, where)
    return dict(table)


def _seeds(values: Any, where: str) -> tuple[int, ...]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}: expected a list of integers, got {_short(values)}")
    outside = [v for v in values if not 0 <= v < MAX_SEED]
    if outside:
        raise ConfigError(f"{where}: seeds must lie in [0, 2**32), got {outside[0]}")
    duplicates = sorted(v for v, n in collections.Counter(values).items() if n > 1)
    if duplicates:
        raise ConfigError(f"{where}: duplicate seed(s) {', '.join(map(str, duplicates))}")
    return tuple(values)


def _intervals(items: Any, where: str) -> tuple[Interval, ...]:
    if not isinstance(items, list):
        raise ConfigError(f"{where}: [[intervals]] must be an array of tables")
    intervals = []
    for number, item in enumerate(items, start=1):
        table = _checked(item, INTERVAL_KEYS, f"{where} interval {number}")
        random_crop = table.get("random_crop", False)
        if not isinstance(random_crop, bool):
            raise ConfigError(f"{where} interval {number}: random_crop must be true or false")
        i_min, i_max = table.get("i_min", 0.0), table.get("i_max", 1.0)
        for value in (i_min, i_max):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where} interval {number}: i_min and i_max must be numbers, got {value!r}")
        try:
            validate_interval(float(i_min), float(i_max))
        except ConfigError as exc:
            raise ConfigError(f"{where} interval {number}: {exc}") from None
        if random_crop and (i_min, i_max) != (0, 1):
            raise ConfigError(f"{where} interval {number}: random cropping means [0, 1], got [{i_min}, {i_max}]")
        label_name = table.get("name")
        if label_name is not None:
            jobscript.check_text(label_name, f"{where} interval {number}.name")
            if not label_name.strip() or len(label_name) > MAX_LABEL:
                raise ConfigError(f"{where} interval {number}: name must be 1-{MAX_LABEL} characters")
        intervals.append(Interval(float(i_min), float(i_max), random_crop, label_name))
    labels = [interval.label for interval in intervals]
    repeated = sorted(label for label, n in collections.Counter(labels).items() if n > 1)
    if repeated:
        raise ConfigError(f"{where}: interval(s) listed twice: {', '.join(repeated)}")
    return tuple(intervals)


def _cluster_profile(reference: Any, base_dir: Path, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The profile's [slurm] settings and its [notify] section (a webhook for alerts, checked now)."""
    if reference is None:
        return {}, {}
    if not isinstance(reference, str):
        raise ConfigError(f"{where}: [study].cluster must be a path to a cluster profile")
    path = Path(reference) if Path(reference).is_absolute() else base_dir / reference
    raw = _read_toml(path)
    _check_keys(raw, ("slurm", "notify"), str(path))
    notify = _notify(raw.get("notify", {}), f"{path} [notify]")
    return _checked(raw.get("slurm", {}), SLURM_KEYS, f"{path} [slurm]"), notify


def _notify(table: Any, where: str) -> dict[str, Any]:
    """A [notify] section (study file, cluster profile or user config), its webhook checked now."""
    notify = _checked(table, NOTIFY_KEYS, where)
    if "webhook" in notify:
        from ioussl.jobtext import check_webhook

        check_webhook(notify["webhook"], where)
    return notify


def _user_notify() -> dict[str, Any]:
    from ioussl.userconfig import read_user_config

    path, raw = read_user_config()
    return _notify(raw.get("notify", {}), f"{path} [notify]") if raw else {}


def _resources(raw: Any, cluster: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Per-stage resources over the cluster profile, validated now (types, ranges, job-script safety)."""
    from ioussl.resources import resources_for_run

    _check_keys(raw, ("pretrain", "finetune"), f"{where} [resources]")
    merged = {}
    for stage in ("pretrain", "finetune"):
        stage_resources = _checked(raw.get(stage, {}), RESOURCE_KEYS, f"{where} [resources.{stage}]")
        merged[stage] = {"slurm": dict(cluster), **stage_resources}
        resources_for_run(merged[stage], where=f"{where} [resources.{stage}]")
    return merged


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def spec_summary(spec: StudySpec) -> dict[str, Any]:
    """A JSON-able view of the parsed study, stored with the study for provenance (and, with a sweep, the
    values of each axis in file order: the order of a report's rows)."""
    summary = {
        "name": spec.name,
        "description": spec.description,
        "intervals": [dataclasses.asdict(i) for i in spec.intervals],
        "pretrain_seeds": list(spec.pretrain_seeds),
        "finetune_seeds": list(spec.finetune_seeds),
        "baseline_seeds": list(spec.baseline_seeds),
        "raw": spec.raw,
        "notify": dict(spec.notify),
    }
    if spec.report:
        summary["report"] = dict(spec.report)
    if spec.overrides:  # absent without overrides: a study planned as before stores the same summary
        summary["overrides"] = list(spec.overrides)
    if spec.sweep:
        summary["sweep"] = spec.sweep.values()
    return summary
