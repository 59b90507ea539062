from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from diagnostics.management.commands.evaluate_model import resolve_bundle


class Command(BaseCommand):
    help = "Print the top three stages with percentages for each IMAGE (the active model, or --bundle)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("images", nargs="+")
        parser.add_argument("--bundle", help="a bundle folder instead of the active model")
        parser.add_argument("--task", help="the active model of this task (needed when several are active)")
        parser.add_argument("--json", action="store_true", help="one JSON document on stdout")

    def handle(self, *args: Any, **options: Any) -> None:
        from diagnostics.ml.bundle import BundleError
        from diagnostics.ml.preprocess import ImageDecodeError
        from diagnostics.ml.runner import InferenceRunner

        bundle = resolve_bundle(model=None, bundle=options["bundle"], task=options["task"])
        try:
            runner = InferenceRunner(bundle)
        except BundleError as exc:
            raise CommandError(str(exc)) from exc
        results: list[dict[str, Any]] = []
        failed = 0
        for name in options["images"]:
            try:
                array = runner.preprocess(Path(name).read_bytes())
            except (OSError, ImageDecodeError) as exc:
                failed += 1
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                results.append({"image": name, "error": f"cannot read this image: {reason}"})
                continue
            probs = runner.predict_arrays(array[None])[0]
            order = sorted(range(len(runner.labels)), key=lambda k: -probs[k])[:3]
            top = [{"stage": runner.labels[k], "probability": round(float(probs[k]), 6)} for k in order]
            uncertain = float(probs[order[0]]) < runner.manifest.uncertain_below
            results.append({"image": name, "top": top, "uncertain": uncertain})
        model = f"{runner.manifest.name} {runner.manifest.version}"
        if options["json"]:
            self.stdout.write(json.dumps({"model": model, "results": results}, indent=2))
        else:
            for r in results:
                if "error" in r:
                    self.stderr.write(f"{r['image']}: {r['error']}")
                    continue
                stages = ", ".join(f"{t['stage']} {100 * t['probability']:.1f} %" for t in r["top"])
                self.stdout.write(f"{r['image']}: {stages}{' (uncertain)' if r['uncertain'] else ''}")
        if failed:
            raise CommandError(f"{failed} of {len(results)} image(s) could not be read")
