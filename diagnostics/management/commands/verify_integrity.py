"""After a restore, or any time: the audit chain is intact, every signed decision's
signature verifies, every scan and heat map decrypts and matches its SHA-256. Exits 1
naming the problems."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from diagnostics.backup import integrity_check


class Command(BaseCommand):
    help = "Verify the audit chain, every decision's signature and every stored object's SHA-256."

    def handle(self, *args: Any, **options: Any) -> None:
        report = integrity_check()
        summary = (
            f"audit chain {report.audit_events} events, {report.decisions} signed decisions, "
            f"{report.scans} scans, {report.heatmaps} heat maps"
        )
        if not report.ok:
            raise CommandError(f"integrity check FAILED ({summary}):\n" + "\n".join(report.problems))
        self.stdout.write(f"integrity verified: {summary}")
