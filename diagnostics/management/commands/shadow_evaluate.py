"""Run a candidate model version on the last N signed cases of its task (in shadow:
stored apart, shown to no physician) and print the comparison with the predictions
physicians were shown."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from diagnostics.models import ModelVersion
from diagnostics.selectors.shadow import comparison_summary, shadow_comparison_data
from diagnostics.services.shadow import DEFAULT_BACKFILL, shadow_backfill


def _candidate(spec: str) -> ModelVersion:
    qs = ModelVersion.objects.filter(status=ModelVersion.Status.CANDIDATE)
    parts = spec.split()
    if len(parts) == 2:
        qs = qs.filter(name=parts[0], version=parts[1])
    else:
        from uuid import UUID

        try:
            qs = qs.filter(uuid=UUID(spec))
        except ValueError:
            qs = qs.filter(version=spec)
    found = list(qs[:2])
    if len(found) != 1:
        raise CommandError(f"'{spec}' names {'no' if not found else 'more than one'} candidate version")
    return found[0]


class Command(BaseCommand):
    help = "Run a candidate version in shadow on the last N signed cases and print the comparison."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", help="the candidate: 'NAME VERSION', VERSION or its UUID")
        parser.add_argument("--last", type=int, default=DEFAULT_BACKFILL, help="signed cases to run on")

    def handle(self, *args: Any, **options: Any) -> None:
        candidate = _candidate(options["model"])
        try:
            created = shadow_backfill(acting_user=None, model_version=candidate, last=options["last"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"{created} new shadow prediction(s) of {candidate}")
        summary = comparison_summary(shadow_comparison_data(model_version=candidate))
        self.stdout.write(json.dumps(summary, indent=2) if summary else "no signed case to compare on yet")
