from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import services
from accounts.models import User


class Command(BaseCommand):
    help = "Create an expiring API token for a user and print its secret (shown once; only its hash is kept)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line", help="what the token is for")
        parser.add_argument("--days", type=int, default=services.DEFAULT_TOKEN_DAYS, help="lifetime in days")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = User.objects.get(username=options["username"])
        except User.DoesNotExist as exc:
            raise CommandError(f"no user named {options['username']!r}") from exc
        try:
            token, key = services.api_token_create(
                acting_user=None, user=user, name=options["name"], expires_in_days=options["days"]
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stderr.write(f"token {token.uuid} for {user.username}, expires {token.expires_at:%Y-%m-%d %H:%M} UTC")
        self.stdout.write(key)
