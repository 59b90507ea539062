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
        parser.add_argument("--task", help="register under this task instead of the manifest's")
        parser.add_argument(
            "--force-labels",
            action="store_true",
            help="activate even though the labels differ from the task's active version (audited)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            mv = services.model_register(
                acting_user=None,
                bundle_dir=options["bundle"],
                activate=options["activate"],
                task=options["task"],
                force_labels=options["force_labels"],
            )
        except (BundleError, ValidationError) as exc:
            msg = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
            raise CommandError(msg) from exc
        self.stdout.write(f"registered {mv} for task '{mv.task}' ({mv.status}), sha256 {mv.sha256}")
