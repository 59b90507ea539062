"""Write the signed, de-identified scans of chosen care units and dates as a training
set: a folder per signed stage, `dataset.json` (the stage order `train_model` reads)
and `manifest.json` (which decisions went in). Audited."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from diagnostics.services.training_data import training_set_export


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"'{value}' is not a date (YYYY-MM-DD)") from exc


def _start_of(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


class Command(BaseCommand):
    help = "Export signed decisions of chosen care units and dates as a training set (folder per stage)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--units", nargs="+", required=True, help="care unit names")
        parser.add_argument("--since", required=True, help="first signing day, YYYY-MM-DD (inclusive)")
        parser.add_argument("--until", required=True, help="last signing day, YYYY-MM-DD (inclusive)")
        parser.add_argument("--out", required=True, help="output folder (must not exist)")

    def handle(self, *args: Any, **options: Any) -> None:
        since = _start_of(_day(options["since"]))
        until = _start_of(_day(options["until"]) + timedelta(days=1))
        try:
            result = training_set_export(
                acting_user=None,
                unit_names=options["units"],
                since=since,
                until=until,
                out_dir=Path(options["out"]),
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        counts = ", ".join(f"{stage}: {n}" for stage, n in result.counts.items())
        self.stdout.write(f"exported {result.decisions} signed decision(s) to {result.out_dir} ({counts})")
        if result.skipped_slides:
            self.stdout.write(f"skipped {result.skipped_slides} whole-slide decision(s) (slides are not exported)")
        self.stdout.write(f"manifest SHA-256 {result.manifest_sha256}")
