"""CLI: the registry itself — which schema it holds, and upgrading it to this ioussl's."""

from __future__ import annotations

import typer

from ioussl.cli.options import DbOption

db_app = typer.Typer(help="The registry database: schema version and upgrades.", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade(
    db: DbOption = None,
    backup: bool = typer.Option(
        True, "--backup/--no-backup", help="SQLite: copy the file beside itself first (default)."
    ),
) -> None:
    """Upgrade the registry to this ioussl's schema (one transaction; a SQLite file is copied first)."""
    from ioussl.registry.migrate import upgrade as run_upgrade

    outcome = run_upgrade(db, backup=backup)
    if not outcome.changed:
        typer.echo(f"registry {outcome.location} is at schema version {outcome.to_version}: nothing to do")
        return
    if outcome.backup is not None:
        typer.echo(f"backed up {outcome.location} to {outcome.backup}")
    typer.echo(f"upgraded registry {outcome.location} from schema version {outcome.from_version} "
               f"to {outcome.to_version}")


@db_app.command("current")
def current(db: DbOption = None) -> None:
    """Show the registry's schema version and whether it needs `ioussl db upgrade`."""
    from ioussl.registry.migrate import current as read_current

    report = read_current(db)
    verdict = "up to date" if report.current else "run `ioussl db upgrade` to use it with this ioussl"
    typer.echo(f"registry {report.location}: schema version {report.version} "
               f"(revision {report.revision or 'none: pre-Alembic v1'}); this ioussl: {report.latest}; {verdict}")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
