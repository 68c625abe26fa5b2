"""What a training run tells the outside while it runs: one metrics.jsonl line and one stdout line per epoch.

The metrics line carries what a live ``status`` needs without reading anything else: ``epoch`` (0-based),
``epochs`` (total), ``step`` and ``steps_total``, ``time`` (unix seconds), ``elapsed_s`` (since this attempt
started), ``items_per_s`` (pairs/s when pretraining, slices/s when fine-tuning) and the stage's numbers
(``loss``; fine-tuning adds ``val_dsc`` on evaluated epochs and ``last_val_dsc`` once one happened). The
stdout lines (a start line, one per epoch, an end line) are what a SLURM log shows. Only the main rank
prints (``main``): the other processes of a multi-GPU job train the same epochs in step with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """One attempt of one stage: its clock and its totals, for the lines it writes."""

    stage: str
    epochs: int
    steps_per_epoch: int
    first_epoch: int = 0
    began: float = field(default_factory=time.perf_counter)
    main: bool = True  # Runtime.is_main: whether this process prints

    @property
    def steps_total(self) -> int:
        return self.epochs * self.steps_per_epoch

    def start(self, step: int, device: dict[str, Any], resumed: bool) -> None:
        where = f"{device.get('device')} ({device.get('device_name')}, autocast {device.get('autocast')})"
        if resumed:
            head = f"resuming at epoch {self.first_epoch + 1}/{self.epochs}, step {step:,}/{self.steps_total:,}"
        else:
            head = f"starting {self.epochs} epochs x {self.steps_per_epoch:,} steps"
        self._say(f"{head} on {where}")

    def line(self, epoch: int, step: int, items: float, **stats: Any) -> dict[str, Any]:
        """The metrics.jsonl line of ``epoch`` (``items`` per second over the epoch), printed as well."""
        elapsed = time.perf_counter() - self.began
        line = {
            "stage": self.stage, "epoch": epoch, "epochs": self.epochs, "step": step,
            "steps_total": self.steps_total, "time": time.time(), "elapsed_s": elapsed, "items_per_s": items,
            **stats,
        }  # fmt: skip
        done = epoch + 1 - self.first_epoch
        eta = elapsed / max(done, 1) * (self.epochs - epoch - 1)
        self._say(f"epoch {epoch + 1}/{self.epochs} step {step:,}/{self.steps_total:,} {_numbers(line)}"
                  f"; elapsed {_clock(elapsed)}, eta {_clock(eta)}")  # fmt: skip
        return line

    def end(self, summary: str) -> None:
        self._say(f"done: {summary} (this attempt {_clock(time.perf_counter() - self.began)})")

    def _say(self, text: str) -> None:
        if self.main:
            say(self.stage, text)


def say(stage: str, text: str) -> None:
    """One line on stdout, flushed at once (SLURM logs are files: nothing may wait in a buffer)."""
    print(f"[ioussl {stage}] {text}", flush=True)


def _numbers(line: dict[str, Any]) -> str:
    unit = "pairs/s" if line["stage"] == "pretrain" else "slices/s"
    parts = [f"loss {line['loss']:.4f}"]
    if "collapse" in line:
        parts.append(f"collapse {line['collapse']:.3f} fallback {100 * line['fallback_rate']:.1f}%")
    parts.append(f"{line['items_per_s']:,.1f} {unit}")
    if "val_dsc" in line:
        parts.append(f"val DSC {line['val_dsc']:.4f} (best {line['best_dsc']:.4f})")
    return " ".join(parts)


def _clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0.0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
