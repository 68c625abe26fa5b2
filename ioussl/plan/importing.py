"""Importing externally obtained per-run results (CSV) into a study.

CSV columns: ``group`` (a report row, e.g. ``[0.3, 0.6]`` or ``no pretraining``), ``pretrain_seed`` (empty
for the baseline), ``seed`` (the fine-tune seed), ``dsc`` (thesis per-slice DSC) and optionally ``dsc_3d``
and ``note``, and ``pairing``: ``known`` where the row's pretrain seed really is the pretraining its
fine-tune came from, else ``unknown`` (the default: the thesis' Table 4.2 does not say which DSC is whose,
and the report then compares such runs unpaired). Every row is checked before anything is written; imported
runs are marked as such, with the source note, and never overwrite a result that ioussl recorded itself.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ioussl.errors import ConfigError, DataError
from ioussl.plan import expand as planning
from ioussl.plan.service import PlanOutcome, register_runs
from ioussl.plan.study import load_study
from ioussl.registry import opened, repo
from ioussl.registry.models import IMPORTED, Run, utcnow
from ioussl.status import RunStatus

REQUIRED = ("group", "pretrain_seed", "seed", "dsc")
OPTIONAL = ("dsc_3d", "note", "pairing")
PAIRINGS = ("known", "unknown")


@dataclass(frozen=True)
class ImportRow:
    line: int
    group: str
    pretrain_seed: int | None
    seed: int
    dsc: float
    dsc_3d: float | None
    note: str | None
    pairing: str = "unknown"  # whether the row's pretrain seed is known to be its fine-tune's pretraining


@dataclass
class ImportOutcome:
    study: str
    imported: int = 0
    unchanged: int = 0
    pretrains_marked: int = 0


def read_results_csv(path: str | Path) -> list[ImportRow]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"results file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED if c not in columns]
            unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
            if missing or unknown:
                raise DataError(f"{path}: columns must be {', '.join(REQUIRED)} (optional {', '.join(OPTIONAL)}); "
                                f"missing {missing or 'none'}, unknown {unknown or 'none'}")
            rows = [_parse_row(path, number, raw) for number, raw in enumerate(reader, start=2)]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text CSV file (byte {exc.start})") from None
    except (csv.Error, OSError) as exc:
        raise DataError(f"{path}: cannot be read as CSV: {exc}") from None
    if not rows:
        raise DataError(f"{path}: no result rows")
    keys = [(r.group, r.pretrain_seed, r.seed) for r in rows]
    twice = sorted({k for k in keys if keys.count(k) > 1}, key=str)
    if twice:
        raise DataError(f"{path}: the same run is listed twice: {twice[0]}")
    return rows


def _parse_row(path: Path, line: int, raw: dict[str, str | None]) -> ImportRow:
    def number(name: str, kind: type, optional: bool = False):
        text = (raw.get(name) or "").strip()
        if not text:
            if optional:
                return None
            raise DataError(f"{path}:{line}: {name} is empty")
        try:
            return kind(text)
        except ValueError:
            raise DataError(f"{path}:{line}: {name} must be a {kind.__name__}, got {text!r}") from None

    dsc = number("dsc", float)
    dsc_3d = number("dsc_3d", float, optional=True)
    for name, value in (("dsc", dsc), ("dsc_3d", dsc_3d)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise DataError(f"{path}:{line}: {name} must lie in [0, 1], got {value}")
    pairing = (raw.get("pairing") or "").strip() or "unknown"
    if pairing not in PAIRINGS:
        raise DataError(f"{path}:{line}: pairing must be known or unknown, got {pairing!r}")
    return ImportRow(line=line, group=(raw.get("group") or "").strip(),
                     pretrain_seed=number("pretrain_seed", int, optional=True), seed=number("seed", int),
                     dsc=dsc, dsc_3d=dsc_3d, note=(raw.get("note") or "").strip() or None, pairing=pairing)


def import_results(study_file: str | Path, results_csv: str | Path, db: str | None, source: str,
                   base_dir: str | None = None) -> ImportOutcome:
    """Plan the study (data not needed) and attach the CSV's results to its fine-tunes, all or nothing."""
    if not source.strip():
        raise ConfigError("--source must say where the results come from")
    spec = load_study(study_file, base_dir=base_dir)
    planning.check_plan_size(spec)
    planned = planning.expand_grid(spec)
    rows = read_results_csv(results_csv)
    outcome = ImportOutcome(study=spec.name)
    with opened(db, create=True) as registry, registry.session() as session:
        register_runs(session, spec, planned, PlanOutcome(study=spec.name))
        by_key = {(p.group, p.pretrain_seed, p.seed): p.key for p in planned if p.stage == "finetune"}
        for row in rows:
            key = by_key.get((row.group, row.pretrain_seed, row.seed))
            if key is None:
                raise DataError(f"{results_csv}:{row.line}: no fine-tune in study {spec.name!r} for group "
                                f"{row.group!r}, pretrain seed {row.pretrain_seed}, seed {row.seed}")
            _import_one(session, repo.get_run(session, key), row, source, outcome)
        _mark_parents(session, spec.name, source, outcome)
    return outcome


def _import_one(session, run: Run, row: ImportRow, source: str, outcome: ImportOutcome) -> None:
    if run.result is not None and not run.result.imported:
        raise DataError(f"run {run.id} already has a result recorded by ioussl; an import never overwrites it")
    known = row.pairing == "known"
    if run.result is not None and run.result.dsc == row.dsc and run.result.dsc_3d == row.dsc_3d \
            and bool((run.result.payload or {}).get("pairing_known")) == known:
        outcome.unchanged += 1
        return
    note = f"{source}{' - ' + row.note if row.note else ''}"
    payload = {"dsc": row.dsc, "dsc_3d": row.dsc_3d, "imported_from": note}
    if known:  # only where said: a registry imported before keeps its payloads (and the report its reading)
        payload["pairing_known"] = True
    repo.record_result(session, run, {"dsc": row.dsc, "dsc_3d": row.dsc_3d}, payload, imported=True, source=note)
    _complete_imported(session, run, note)
    outcome.imported += 1


def _complete_imported(session, run: Run, note: str) -> None:
    if run.status != RunStatus.COMPLETED:
        repo.set_status(session, run, RunStatus.COMPLETED, reason=f"imported: {note}")
        now = utcnow()
        repo.add_attempt(session, run_id=run.id, executor=IMPORTED, status=RunStatus.COMPLETED, reason=note,
                         submitted_at=now, ended_at=now)
    repo.mark_imported(run)


def _mark_parents(session, study: str, source: str, outcome: ImportOutcome) -> None:
    """A pretrain whose fine-tunes were all imported evidently ran elsewhere: mark it so, without a result."""
    finetunes = repo.list_runs(session, study=study, stage="finetune")
    for record in repo.list_runs(session, study=study, stage="pretrain", statuses=[RunStatus.PLANNED]):
        children = [r for r in finetunes if r.parent_id == record.id]
        if children and all(child.imported for child in children):
            _complete_imported(session, repo.get_run(session, record.id), f"{source} (implied by its fine-tunes)")
            outcome.pretrains_marked += 1
