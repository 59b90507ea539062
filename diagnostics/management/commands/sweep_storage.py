"""Find, and delete, stored objects that no database row refers to: what an upload
that failed halfway could not remove because the store or the database was down.
Only content-addressed objects and health probes older than the grace period are
considered, so an upload still inside its transaction is never touched."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from diagnostics.intake.storage import orphans_sweep


class Command(BaseCommand):
    help = "Delete stored objects that no row refers to (older than the grace period)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
        parser.add_argument(
            "--grace-seconds",
            type=int,
            default=None,
            help=f"skip objects younger than this (default CANCERWEB_STORAGE_ORPHAN_GRACE_S, "
            f"{settings.STORAGE_ORPHAN_GRACE_S})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        grace = options["grace_seconds"]
        found = orphans_sweep(
            older_than=None if grace is None else timedelta(seconds=max(0, grace)), dry_run=options["dry_run"]
        )
        verb = "would delete" if options["dry_run"] else "deleted"
        self.stdout.write(f"{len(found)} orphaned object(s) {verb}")
        for name in found:
            self.stdout.write(f"  {name}")
