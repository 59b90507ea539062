"""Walk the audit hash chain; print the first broken link and exit non-zero."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.audit import verify_chain


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain; exits 1 naming the first broken event."

    def handle(self, *args: Any, **options: Any) -> None:
        report = verify_chain()
        if not report.ok:
            raise CommandError(f"audit chain broken at {report.first_break} (after {report.checked} events checked)")
        self.stdout.write(f"audit chain intact: {report.checked} events")
