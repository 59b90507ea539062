from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from diagnostics.services.model_registry import model_register


class Command(BaseCommand):
    help = "Register a model bundle (folder with manifest.json and the .keras file); --activate makes it active."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("bundle", help="the bundle folder: a path, or a name in the model folder (MODEL_DIR)")
        parser.add_argument("--activate", action="store_true")
        parser.add_argument(
            "--candidate",
            action="store_true",
            help="run it in shadow beside the task's active version (its output is shown to no physician)",
        )
        parser.add_argument("--task", help="register under this task instead of the manifest's")
        parser.add_argument(
            "--force-labels",
            action="store_true",
            help="activate even though the labels differ from the task's active version (audited)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            mv = model_register(
                acting_user=None,
                # A path the operator typed is relative to the working directory; the
                # service still refuses anything outside the model folder.
                bundle_dir=Path(options["bundle"]).resolve() if Path(options["bundle"]).exists() else options["bundle"],
                activate=options["activate"],
                task=options["task"],
                force_labels=options["force_labels"],
                candidate=options["candidate"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"registered {mv} for task '{mv.task}' ({mv.status}), sha256 {mv.sha256}")
