from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Train a stage classifier from image folders and write a model bundle. Takes the same "
        "arguments as `python -m diagnostics.ml.train` (see --help there); nothing is registered."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("train_args", nargs="*", help="arguments passed to diagnostics.ml.train")

    def run_from_argv(self, argv: list[str]) -> None:
        # Everything after the command name belongs to the training CLI, flags included,
        # so the two entry points cannot drift apart.
        from diagnostics.ml.train import main

        code = main(argv[2:])
        if code:
            sys.exit(code)

    def handle(self, *args: Any, **options: Any) -> None:  # called via call_command only
        from diagnostics.ml.train import main

        code = main(list(options.get("train_args") or []))
        if code:
            raise CommandError("training stopped; see the message above")
