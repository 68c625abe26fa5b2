"""The HTML report's runs: one table, sortable and filterable in the browser, and each run's details.

The table has a row per run (id, stage, group, seeds, status, attempts, elapsed time, job, scores). Its
header buttons sort it (numbers as numbers, missing values last), a text box keeps the rows holding every
word typed (in any cell, the reason or the swept settings), a select keeps one state. Each run id links to
the run's details below the table: its reason and directory, its configuration, its organ scores and the
last lines of its job's output. A run's configuration is shown as the settings in which it differs from
every other run of its stage; the settings they all share are listed once, above (a sweep of thousands of
runs stays a file one can mail). The interactivity is a short inline script (vanilla JavaScript, no
library, nothing fetched); without it the table and details still read in full.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ioussl.registry.repo import RunRecord
from ioussl.status import ACTIVE, RunStatus


@dataclass(frozen=True)
class RunDetails:
    """What a run's details show beyond its registry row (the service reads it)."""

    settings: Mapping[str, str] = field(default_factory=dict)  # dotted setting -> value, the whole config
    organs: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)  # column -> organ -> score
    log: Sequence[str] = ()  # the last lines of the job's output, oldest first
    log_note: str = ""  # where the lines come from, or why there are none
    per_case: Mapping[str, Any] = field(default_factory=dict)  # "val"/"test" -> case -> organ -> DSC, as recorded


Number = Callable[[RunRecord], float | None]
# Scores shown as columns where some run has one; "val DSC" is the number that selected the checkpoint.
SCORES: dict[str, Number] = {
    "val DSC": lambda r: r.dsc, "test DSC": lambda r: r.test_dsc, "FLARE DSC": lambda r: r.flare_dsc,
    "FLARE NSD": lambda r: r.flare_nsd,
}


def render(runs: Sequence[RunRecord], details: Mapping[str, RunDetails]) -> str:
    """The filter bar, the sortable table and the details of every run."""
    several = len({r.study for r in runs}) > 1
    return _filters(runs) + _table(runs, several) + _details(runs, details, several)


def script_hash() -> str:
    """The Content-Security-Policy source that lets exactly :data:`SCRIPT` run (and no injected script)."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode("ascii") + "'"


def _filters(runs: Sequence[RunRecord]) -> str:
    states = list(dict.fromkeys(r.status.value for r in runs))
    options = "".join(f"<option value='{_e(s)}'>{_e(s)}</option>" for s in states)
    return ("<div class='filters'><label>filter <input id='run-filter' type='search' "
            "placeholder='words in any column, reason or setting' autocomplete='off'></label>"
            f"<label>state <select id='run-state'><option value=''>every state</option>{options}</select></label>"
            f"<span id='run-count' aria-live='polite'>{len(runs)} of {len(runs)} runs</span></div>")


def _table(runs: Sequence[RunRecord], several: bool) -> str:
    scores = {name: get for name, get in SCORES.items() if any(get(r) is not None for r in runs)}
    jobs = any(r.job_id for r in runs)
    columns: list[tuple[str, str, str]] = [("run", "text", ""), *([("study", "text", "")] if several else []),
                                           ("stage", "text", ""), ("group", "text", ""),
                                           ("pre seed", "number", "minor"), ("seed", "number", ""),
                                           ("status", "text", ""), ("attempts", "number", "minor"),
                                           ("elapsed", "number", ""), *([("job", "text", "minor")] if jobs else []),
                                           *((name, "number", "") for name in scores)]
    head = "".join(f"<th data-type='{kind}' class='{'t ' if kind == 'text' else ''}{extra}'>"
                   f"<button type='button'>{_e(name)}</button></th>" for name, kind, extra in columns)
    rows = []
    for run in runs:
        cells = [f"<td class='t'><a href='#run-{_e(run.id)}'><code>{_e(run.id)}</code></a></td>"]
        if several:
            cells.append(_td(run.study, cls="t"))
        cells += [_td(run.stage, cls="t"), _td(run.group, cls="t"),
                  _td(_opt(run.pretrain_seed), run.pretrain_seed, "minor"),
                  _td(str(run.seed), run.seed), _status_cell(run), _td(str(run.attempts), run.attempts, "minor"),
                  _td(_elapsed(run.elapsed_s), run.elapsed_s)]
        if jobs:
            cells.append(_td(run.job_id or "-", None, "t minor"))
        cells += [_td(_num(get(run)), get(run)) for get in scores.values()]
        search = " ".join([run.id, run.study, run.stage, run.group, run.status.value, run.status_reason or "",
                           *(f"{k}={_plain(v)}" for k, v in run.point.items())]).lower()
        rows.append(f"<tr data-status='{_e(run.status.value)}' data-search='{_e(search)}'>{''.join(cells)}</tr>")
    return (f"<div class='scroll'><table class='runs' id='runs-table'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _status_cell(run: RunRecord) -> str:
    imported = "<sup title='imported'>*</sup>" if run.imported else ""
    # A completed run's reason ("finished (result.json ...)") says nothing new: it stays in the details.
    reason = f"<div class='reason {_status_class(run.status)}'>{_e(_short(run.status_reason))}</div>" \
        if run.status_reason and run.status != RunStatus.COMPLETED else ""
    return (f"<td class='state'><span class='status {_status_class(run.status)}'>{_e(run.status.value)}</span>"
            f"{imported}{reason}</td>")


def _details(runs: Sequence[RunRecord], details: Mapping[str, RunDetails], several: bool) -> str:
    shared = _shared_settings(runs, details)
    parts = [f"<details class='shared'><summary>settings every {_e(stage)} run shares ({len(settings)})</summary>"
             f"{_settings_table(settings)}</details>" for stage, settings in shared.items()]
    for run in runs:
        detail = details.get(run.id, RunDetails())
        own = {k: v for k, v in detail.settings.items() if shared.get(run.stage, {}).get(k) != v}
        facts = [("study", run.study)] if several else []
        facts += [("run directory", run.run_dir), ("state", run.status.value), ("reason", run.status_reason or "-"),
                  ("elapsed", _elapsed(run.elapsed_s)), ("attempts", str(run.attempts)),
                  ("latest job", run.job_id or "-")]
        parent = f"<a href='#run-{_e(run.parent_id)}'><code>{_e(run.parent_id)}</code></a>" if run.parent_id else "-"
        body = ("<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
                + f"<dt>parent</dt><dd>{parent}</dd></dl>"
                + f"<h4>configuration: settings of its own ({len(own)})</h4>"
                + (_settings_table(own) if own else "<p class='muted'>none: it has the settings its stage "
                   "shares</p>")
                + _organ_table(detail.organs) + _log(detail))
        title = f"{run.id} · {run.stage} · {run.group} · seed {run.seed} · {run.status.value}"
        parts.append(f"<details class='run' id='run-{_e(run.id)}'><summary>{_e(title)}</summary>"
                     f"<div class='detail'>{body}</div></details>")
    return "<div class='run-details'><h3>Run details</h3>" + "".join(parts) + "</div>"


def _shared_settings(runs: Sequence[RunRecord], details: Mapping[str, RunDetails]) -> dict[str, dict[str, str]]:
    """Per stage, the settings (and values) every run of that stage with a known configuration has."""
    shared: dict[str, dict[str, str]] = {}
    for run in runs:
        settings = details.get(run.id, RunDetails()).settings
        if not settings:
            continue
        if run.stage not in shared:
            shared[run.stage] = dict(settings)
        else:
            common = shared[run.stage]
            for key in [k for k, v in common.items() if settings.get(k) != v]:
                del common[key]
    return shared


def _settings_table(settings: Mapping[str, str]) -> str:
    rows = "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_e(v)}</td></tr>" for k, v in sorted(settings.items()))
    return f"<table class='settings'><tbody>{rows}</tbody></table>"


def _organ_table(organs: Mapping[str, Mapping[str, float | None]]) -> str:
    if not organs:
        return "<h4>organ scores</h4><p class='muted'>none recorded</p>"
    columns = list(organs)
    names = list(dict.fromkeys(name for scores in organs.values() for name in scores))
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    rows = "".join(f"<tr><td>{_e(name)}</td>" + "".join(_td(_num(_score(organs[c].get(name))))
                                                         for c in columns) + "</tr>" for name in names)
    return (f"<h4>organ scores</h4><div class='scroll'><table class='organs'><thead><tr><th>organ</th>{head}</tr>"
            f"</thead><tbody>{rows}</tbody></table></div>")


def _log(detail: RunDetails) -> str:
    note = f"<p class='muted'>{_e(detail.log_note)}</p>" if detail.log_note else ""
    lines = f"<pre class='log'>{_e(chr(10).join(detail.log))}</pre>" if detail.log else ""
    return f"<h4>last lines of its output</h4>{note}{lines}"


def _td(text: str, sort: float | int | None = None, cls: str = "") -> str:
    value = "" if sort is None or (isinstance(sort, float) and not math.isfinite(sort)) else repr(sort)
    attrs = (f" data-v='{value}'" if sort is not None or text == "-" else "") + (f" class='{cls}'" if cls else "")
    return f"<td{attrs}>{_e(text)}</td>"


def _score(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _status_class(status: RunStatus) -> str:
    if status == RunStatus.COMPLETED:
        return "ok"
    if status in ACTIVE:
        return "active"
    return "idle" if status in (RunStatus.PLANNED, RunStatus.CANCELLED) else "bad"


def _elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _short(text: str | None, limit: int = 90) -> str:
    text = (text or "").strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


# Sorting keeps ties in their previous order (Array.prototype.sort is stable), so sorting by group, then
# by seed, reads as "by seed within group"; empty cells (data-v="") stay last in both directions.
SCRIPT = """(() => {
  const table = document.getElementById('runs-table');
  if (!table) return;
  const body = table.tBodies[0];
  const rows = [...body.rows];
  const filter = document.getElementById('run-filter');
  const state = document.getElementById('run-state');
  const count = document.getElementById('run-count');
  const apply = () => {
    const words = filter.value.toLowerCase().split(/\\s+/).filter(Boolean);
    let shown = 0;
    for (const row of rows) {
      const text = row.dataset.search + ' ' + row.textContent.toLowerCase();
      const keep = (!state.value || row.dataset.status === state.value) && words.every(w => text.includes(w));
      row.hidden = !keep;
      shown += keep ? 1 : 0;
    }
    count.textContent = shown + ' of ' + rows.length + ' runs';
  };
  filter.addEventListener('input', apply);
  state.addEventListener('change', apply);
  const heads = [...table.tHead.rows[0].cells];
  heads.forEach((th, column) => {
    th.querySelector('button').addEventListener('click', () => {
      const ascending = th.getAttribute('aria-sort') !== 'ascending';
      heads.forEach(h => h.removeAttribute('aria-sort'));
      th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
      const numeric = th.dataset.type === 'number';
      const key = row => {
        const cell = row.cells[column];
        return cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent.trim();
      };
      const sorted = [...body.rows].sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === '' || y === '') return (x === '' ? 1 : 0) - (y === '' ? 1 : 0);
        const order = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
        return ascending ? order : -order;
      });
      body.append(...sorted);
    });
  });
  const openTarget = () => {
    const target = document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (target && target.tagName === 'DETAILS') target.open = true;
  };
  window.addEventListener('hashchange', openTarget);
  openTarget();
})();"""

CSS = """
.filters { display: flex; flex-wrap: wrap; gap: 6px 16px; align-items: center; margin: 0 0 8px; font-size: 13px; }
.filters input { width: 18em; max-width: 60vw; padding: 3px 6px; }
#run-count { color: var(--muted); }
table.runs th { padding: 0; }
table.runs .t { text-align: left; }
table.runs th button { all: unset; cursor: pointer; display: block; padding: 4px 6px; }
table.runs th[aria-sort='ascending'] button::after { content: ' ▲'; }
table.runs th[aria-sort='descending'] button::after { content: ' ▼'; }
table.runs td.state { text-align: left; white-space: normal; min-width: 7em; }
table.runs td.state .reason { max-width: 22em; overflow-wrap: anywhere; }
.run-details h3 { font-size: 15px; margin: 18px 0 6px; }
.run-details details { border-bottom: 1px solid var(--line); padding: 3px 0; }
.run-details summary { font-size: 12.5px; }
.run-details .detail { padding: 4px 0 10px 14px; font-size: 12.5px; }
.run-details h4 { margin: 10px 0 4px; font-size: 12.5px; }
.run-details dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; }
.run-details dt { color: var(--muted); }
.run-details dd { margin: 0; overflow-wrap: anywhere; }
table.settings, table.organs { width: auto; font-size: 12px; }
table.settings td { text-align: left; white-space: normal; overflow-wrap: anywhere; }
pre.log { background: var(--band); padding: 6px 8px; font-size: 11.5px; white-space: pre-wrap;
          overflow-wrap: anywhere; max-height: 22em; overflow-y: auto; }
.muted { color: var(--muted); margin: 0; }
@media (max-width: 900px) {
  main { padding: 16px 10px 30px; }
  table.runs .minor { display: none; }
  table.runs th button, table.runs td { padding: 3px 4px; }
}
"""
