from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from diagnostics import services
from diagnostics.ml.bundle import BundleError


class Command(BaseCommand):
    help = "Register a model bundle (folder with manifest.json and the .keras file); --activate makes it active."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("bundle")
        parser.add_argument("--activate", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            mv = services.model_register(acting_user=None, bundle_dir=options["bundle"], activate=options["activate"])
        except (BundleError, ValidationError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"registered {mv} ({mv.status}), sha256 {mv.sha256}")
