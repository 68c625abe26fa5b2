"""``ioussl run pretrain|finetune``: run one stage in this process, writing exactly the files a job writes.

For debugging on a node without the orchestrator: the job entry point (``submit/entrypoint.py``) builds the
run config (a profile or a config file, plus overrides), writes ``config.json`` into the run directory and
calls the same ``run_stage`` a SLURM job calls. Running it again on the same directory resumes (or returns the result).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ioussl.cli.options import command_group

RunDir = Annotated[Path, typer.Option("--run-dir", help="Run directory (created; resumed if it exists).")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="A RunConfig JSON file.")]
Profile = Annotated[
    str | None, typer.Option("--profile", help="'tiny' (CPU smoke run) or 'thesis' (Table 4.1).")
]
Store = Annotated[
    str | None, typer.Option("--store", help="Preprocessed slice store (overrides the config).")
]
Seed = Annotated[int | None, typer.Option("--seed", help="Run seed (overrides the config).")]


def register(app: typer.Typer) -> None:
    """Attach ``ioussl run pretrain`` and ``ioussl run finetune`` to the root app."""
    run_app = command_group(help="Run one training stage here, without the orchestrator.")

    @run_app.command("pretrain")
    def pretrain(
        run_dir: RunDir,
        config: ConfigFile = None,
        profile: Profile = None,
        store: Store = None,
        seed: Seed = None,
        i_min: Annotated[float | None, typer.Option("--i-min", help="Lowest IoU of a positive pair.")] = None,
        i_max: Annotated[
            float | None, typer.Option("--i-max", help="Highest IoU of a positive pair.")
        ] = None,
        random_crop: Annotated[bool, typer.Option("--random-crop", help="Two independent crops.")] = False,
    ) -> None:
        """SimSiam pretraining of the Swin UNETR encoder; exports checkpoints/encoder.pt."""
        sampler = {"i_min": i_min, "i_max": i_max, "random_crop": random_crop or None}
        result = _run("pretrain", run_dir, None, config, profile, store=store, seed=seed, sampler=sampler)
        typer.echo(
            f"pretrain done: {result['epochs']} epochs, {result['steps']} steps, "
            f"loss {result['final_loss']:.4f}, collapse {result['final_collapse']:.3f}; "
            f"encoder {result['checkpoint']}"
        )

    @run_app.command("finetune")
    def finetune(
        run_dir: RunDir,
        config: ConfigFile = None,
        profile: Profile = None,
        store: Store = None,
        seed: Seed = None,
        split: Annotated[str | None, typer.Option("--split", help="Split JSON (train/val[/test]).")] = None,
        encoder: Annotated[Path | None, typer.Option("--encoder", help="Pretrained encoder.pt.")] = None,
    ) -> None:
        """Swin UNETR fine-tuning for 13 organs; reports the thesis' per-slice DSC, a 3D DSC on the
        preprocessed grid, and FLARE 2022's DSC and NSD on the original image grid."""
        result = _run("finetune", run_dir, encoder, config, profile, store=store, seed=seed, split=split)
        flare = result.get("flare")
        flare_text = (
            f"FLARE 2022 ({flare['part']}) DSC {flare['dsc']:.4f} NSD {flare['nsd']:.4f}"
            if isinstance(flare, dict) else f"FLARE 2022 skipped: {result.get('flare_skipped', 'no section')}"
        )  # fmt: skip
        typer.echo(
            f"finetune done: best epoch {result['best_epoch']}, DSC (thesis, per slice) {result['dsc']:.4f}, "
            f"3D DSC on the preprocessed grid {result['dsc_3d']:.4f}, {flare_text}; "
            f"checkpoint {result['checkpoint']}"
        )

    app.add_typer(run_app, name="run")


def _run(stage: str, run_dir: Path, encoder: Path | None, config: Path | None, profile: str | None,
         **overrides: Any) -> dict[str, Any]:
    """Build the config (submit/entrypoint.py) and run the stage here as a job would."""
    from ioussl.submit.entrypoint import prepare_run_config, run_here

    return run_here(prepare_run_config(stage, config, profile, **overrides), run_dir, encoder)
