"""Create an integration account (a PACS, router or modality that sends studies) and
print its bearer token once."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import CareUnit
from diagnostics.services.integration import integration_account_create


class Command(BaseCommand):
    help = "Create an integration account bound to a care unit and a task; prints its token once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--unit", required=True, help="the care unit's name")
        parser.add_argument("--task", required=True, help="the task received studies are analysed for")
        parser.add_argument("--ae-title", action="append", default=[], help="a calling AE title allowed to C-STORE")
        parser.add_argument("--dicomweb-url", default="", help="the PACS's DICOMweb root (pull source, results)")
        parser.add_argument("--pull", action="store_true", help="poll the PACS for new studies")
        parser.add_argument("--modalities", default="", help="pull filter, e.g. CT,MR")
        parser.add_argument("--study-description", default="", help="pull filter, wildcards * and ?")

    def handle(self, *args: Any, **options: Any) -> None:
        unit = CareUnit.objects.filter(name=options["unit"]).first()
        if unit is None:
            raise CommandError(f"no care unit named {options['unit']!r}")
        try:
            account, token = integration_account_create(
                acting_user=None,
                name=options["name"],
                unit=unit,
                task=options["task"],
                ae_titles=options["ae_title"],
                dicomweb_url=options["dicomweb_url"],
                pull_enabled=options["pull"],
                pull_modalities=options["modalities"],
                pull_study_description=options["study_description"],
            )
        except ValidationError as err:
            raise CommandError("; ".join(err.messages)) from err
        self.stdout.write(f"integration account {account.name} ({account.uuid})")
        self.stdout.write(f"token (shown once): {token}")
