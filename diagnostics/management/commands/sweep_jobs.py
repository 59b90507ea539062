"""Run the job sweeper once, or in a loop (`--loop`) as a process of its own.

The loop is the alternative to celery beat: it keeps running through database and
broker outages, so a lost message or a lost worker is recovered as soon as both
are back, whatever happened to the workers."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections, connections

from diagnostics.services.jobs import job_sweep


class Command(BaseCommand):
    help = "Re-send stale queued inference jobs, requeue lost running ones, fail those out of attempts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", action="store_true", help="keep sweeping every --interval seconds")
        parser.add_argument(
            "--interval", type=float, default=None, help="seconds between sweeps (default JOB_SWEEP_INTERVAL_S)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        interval = options["interval"] or float(settings.JOB_SWEEP_INTERVAL_S)
        if interval <= 0:
            raise ValueError("--interval must be positive")
        while True:
            try:
                if options["loop"]:  # (never inside a test's transaction)
                    close_old_connections()
                result = job_sweep()
                if options["verbosity"] > 1 or not options["loop"]:
                    self.stdout.write(
                        f"re-sent {len(result.resent)}, requeued {len(result.requeued)}, failed {len(result.failed)}"
                    )
            except Exception as exc:
                if not options["loop"]:
                    raise
                # The database or broker is down: try again next round.
                self.stderr.write(f"sweep failed: {type(exc).__name__}; retrying in {interval:g} s")
                connections.close_all()
            if not options["loop"]:
                return
            time.sleep(interval)
