"""``saga-admin``: find stuck and dead-lettered sagas, understand why, and make them go.

Run ``saga-admin --help`` (or ``python -m sagadsl --help``). The commands are
documented with a real session in ``docs/how-to/saga-admin.md``.

The group and its global options live in :mod:`.app`; each command module
below adds its commands to that group when it is imported. A new command
module defines ``@cli.command`` functions on ``sagadsl.cli.app.cli`` and gets
one import line here.
"""

from __future__ import annotations

from . import cancel, db, inspect, locks, operate, prune, serve, stats  # noqa: F401  (each registers its commands on `cli`)
from .app import cli

__all__ = ["cli", "main"]


def main(args: list[str] | None = None) -> int:
    """Run ``saga-admin`` and return its exit code (the console script's entry point)."""
    code: int = cli.main(args=args, prog_name="saga-admin", standalone_mode=False)
    return code
