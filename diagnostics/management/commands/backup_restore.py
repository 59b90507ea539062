"""Restore a backup into empty services (an empty database, an empty bucket or
folder), after checking every file against the backup's manifest; then run
`manage.py verify_integrity`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from diagnostics.backup import BackupError, backup_restore


class Command(BaseCommand):
    help = "Restore a backup made by backup_create into an empty database and an empty object store."
    requires_system_checks: list[str] = []  # the tables do not exist yet

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", help="the backup's folder")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            restored = backup_restore(folder=Path(options["folder"]))
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        counts = ", ".join(f"{n} {kind} objects" for kind, n in restored.items())
        self.stdout.write(f"restored the database and {counts}; now run manage.py verify_integrity")
