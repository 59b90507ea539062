"""Back up PostgreSQL and the object store into a new folder, consistently: the
database first, then the objects (diagnostics/backup.py says why that order is
consistent). The encryption keys are not included: keep them in the secret store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from diagnostics.backup import BackupError, backup_create


class Command(BaseCommand):
    help = "Back up the database (pg_dump) and then every stored object into a new folder."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", help="a new or empty folder for this backup")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = backup_create(folder=Path(options["folder"]))
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        counts = ", ".join(f"{n} {kind} objects" for kind, n in report.objects.items())
        self.stdout.write(f"backup in {report.folder}: database dump, {counts} ({report.bytes} bytes)")
