"""The registry as pandas DataFrames, for notebooks and scripts. Never imports torch; only reads.

    import ioussl.api as api

    runs = api.runs("registry.db")                         # one row per run
    runs.groupby(["data.crop", "pretrain.base_lr"]).dsc.mean()
    curves = api.metrics("registry.db", study="ablation", names=["loss"])
    table = api.report("registry.db", study="ablation", by="data.crop,interval")

``db`` is what ``--db`` takes (a SQLite path or an SQLAlchemy URL); None means ``$IOUSSL_DB``, else
``./registry.db``. ``study`` is a name, a list of names, or None for every study (``report``: the only
one). Every function reads in one transaction without the write lock, so it is safe beside running
``ioussl status`` loops. Errors are ``ioussl.errors.IousslError`` subclasses with a one-line message.
The columns are those of ``ioussl export`` (docs/guide.md, "Your own study").
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ioussl.report import export

__all__ = ["cases", "metrics", "report", "runs"]

Studies = str | Sequence[str] | None


def runs(db: str | None = None, study: Studies = None) -> pd.DataFrame:
    """One row per run: identity, interval and seeds, one column per swept setting (dotted name), state,
    attempts, GPU-hours used, DSCs (validation, test, FLARE 2022), ``dsc_<organ>`` per organ, best epoch and
    checkpoint.

    Args:
        db: the registry (default ``$IOUSSL_DB`` or ``./registry.db``).
        study: one study, several, or None for all of them.

    Returns:
        The runs, ordered by study and report group; integer columns are pandas' nullable ``Int64``.
    """
    return export.runs_frame(db, study)


def metrics(db: str | None = None, study: Studies = None, run: str | Sequence[str] | None = None,
            names: str | Sequence[str] | None = None, stage: str | None = None) -> pd.DataFrame:
    """The per-epoch series in long form: ``study, run_id, stage, interval, pretrain_seed, seed``, one column
    per swept setting, then ``metric, epoch, step, value``.

    Args:
        db: the registry.
        study: one study, several, or None for all of them.
        run: only these runs (ids or unique prefixes of at least 4 characters).
        names: only these series (``loss``, ``collapse``, ``val_dsc``, ...).
        stage: only ``"pretrain"`` or ``"finetune"`` runs.
    """
    if stage is not None and stage not in ("pretrain", "finetune"):
        from ioussl.errors import ConfigError

        raise ConfigError(f"stage must be pretrain or finetune, got {stage!r}")
    return export.metrics_frame(db, study, runs=_listed(run), names=_listed(names), stage=stage)


def cases(db: str | None = None, study: Studies = None) -> pd.DataFrame:
    """FLARE 2022's per-case scores in long form: ``study, run_id, interval, pretrain_seed, seed``, one column
    per swept setting, then ``part`` ("val" or "test"), ``case``, ``organ``, ``flare_dsc``, ``flare_nsd``
    (None where the organ could not be scored). One row per fine-tune, case and organ that FLARE scored.

    Args:
        db: the registry.
        study: one study, several, or None for all of them.
    """
    return export.cases_frame(db, study)


def report(db: str | None = None, study: Studies = None, by: str | Sequence[str] | None = None,
           ddof: int = 0, metric: str | None = None, test: str | None = None) -> pd.DataFrame:
    """``ioussl report`` as a table: one row per group with ``study``, ``group``, its value on each ``by`` axis,
    ``mean``, ``std``, ``n``, ``planned``, ``delta`` and its interval ``delta_ci95_low``, ``delta_ci95_high``
    (or ``ci_note``: "n too small ..."), the ``test`` each row names, its ``p`` and ``p_holm``, ``pairing``,
    ``metric``, the group mean's ``mean_ci95_low`` and ``mean_ci95_high``, and ``values`` and ``run_ids`` as lists.

    Args:
        db: the registry.
        study: one study or several (side by side); None: the registry's only study.
        by: axes to group by, e.g. ``"pretrain.base_lr,interval"`` (default: every swept setting, then interval).
        ddof: 0 for the population std (as the thesis), 1 for the sample std.
        metric: ``dsc``, ``flare_dsc`` or ``flare_nsd`` (default: the study file's ``[report] metric``, else dsc).
        test: ``welch``, ``cases`` or ``wilcoxon`` (default: ``[report] test``, else welch).
    """
    from ioussl.report.service import report_study

    return export.report_frame(report_study(db, study, ddof=ddof, by=by, metric=metric, test=test).report)


def _listed(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
