"""Pull new studies from the PACS of every integration account with pulling on
(QIDO-RS search with the account's modality and study-description filter, WADO-RS
retrieve). Idempotent: a study seen before makes no second case. Beat runs the same
every CANCERWEB_INTEGRATION_PULL_INTERVAL_S."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from diagnostics.models import IntegrationAccount
from diagnostics.services.integration import studies_pull, studies_pull_all


class Command(BaseCommand):
    help = "Pull new studies from the integration accounts' DICOMweb sources (QIDO-RS + WADO-RS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", help="only this integration account (its name)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["account"]:
            account = IntegrationAccount.objects.filter(name=options["account"], active=True).first()
            if account is None:
                raise CommandError(f"no active integration account named {options['account']!r}")
            reports = {account.name: studies_pull(account=account)}
        else:
            reports = studies_pull_all()
        failed = False
        for name, report in reports.items():
            self.stdout.write(
                f"{name}: {report.studies_seen} studies seen, {report.studies_retrieved} retrieved, "
                f"{report.instances_stored} instances stored, {report.instances_refused} refused"
            )
            for error in report.errors:
                failed = True
                self.stderr.write(f"{name}: {error}")
        if failed:
            raise CommandError("some pulls failed (see above; each is an exchange in the admin)")
