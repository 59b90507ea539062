from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiYamlRenderer

from core.api.compat import breaking_changes

DEFAULT_FILE = Path(settings.BASE_DIR) / "docs" / "openapi.yaml"


def current_schema() -> dict[str, Any]:
    """The schema the API serves at /api/v1/schema/, as plain JSON-compatible data."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(json.dumps(schema, default=str))


class Command(BaseCommand):
    help = "Fail when the API's schema breaks clients of the committed docs/openapi.yaml; --write updates the file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--file", default=str(DEFAULT_FILE))
        parser.add_argument("--write", action="store_true", help="write the current schema to the file")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["file"])
        new = current_schema()
        if options["write"]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(OpenApiYamlRenderer().render(new, renderer_context={}))
            self.stdout.write(f"wrote {path}")
            return
        if not path.exists():
            raise CommandError(f"{path} is missing: run manage.py openapi_check --write and commit it")
        old = yaml.safe_load(path.read_text())
        problems = breaking_changes(old, new)
        if problems:
            raise CommandError(
                "the API schema breaks clients of the committed schema:\n  "
                + "\n  ".join(problems)
                + "\nKeep the old shape (or publish /api/v2/)."
            )
        if old != new:
            self.stdout.write(
                f"the API schema changed compatibly; run manage.py openapi_check --write and commit {path.name}"
            )
        else:
            self.stdout.write("the API schema matches the committed file")
