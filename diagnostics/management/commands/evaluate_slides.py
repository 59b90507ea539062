"""Evaluate the slide path of a model bundle on a folder of slides with ground truth."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Run every slide of FOLDER (each with its ground-truth JSON beside it, as make_slide.py writes) through the "
        "slide path of a model bundle; print and write metrics.json and report.md to --out."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder")
        parser.add_argument("--bundle", required=True, help="model bundle folder (its manifest must give mpp)")
        parser.add_argument("--out", required=True)
        parser.add_argument("--batch-size", type=int, default=64)
        parser.add_argument("--threads", type=int, default=3)

    def handle(self, *args: Any, **options: Any) -> None:
        from diagnostics.ml.bundle import BundleError
        from diagnostics.ml.runner import InferenceRunner
        from diagnostics.ml.slide_eval import metrics, report_markdown, run_folder, slide_files
        from diagnostics.ml.slides import SlideMethod

        folder = Path(options["folder"])
        if not folder.is_dir() or not slide_files(folder):
            raise CommandError(f"{folder} holds no slides with a ground-truth JSON beside them")
        try:
            runner = InferenceRunner(options["bundle"])
        except BundleError as exc:
            raise CommandError(str(exc)) from exc
        if not runner.manifest.mpp:
            raise CommandError("the bundle's manifest does not give mpp (micrometres per pixel)")
        params = {k: v for k, v in runner.manifest.slide_method.items() if k in SlideMethod.__dataclass_fields__}
        cases = run_folder(
            folder,
            predict=runner.predict_tiles,
            model_mpp=runner.manifest.mpp,
            input_size=runner.input_size,
            labels=runner.labels,
            method=SlideMethod(**params),
            batch_size=options["batch_size"],
            threads=options["threads"],
        )
        result = metrics(cases)
        result["bundle"] = f"{runner.manifest.name} {runner.manifest.version}"
        result["folder"] = str(folder)
        out = Path(options["out"])
        out.mkdir(parents=True, exist_ok=True)
        clean = json.loads(json.dumps(result, default=float), parse_constant=lambda c: None)
        (out / "metrics.json").write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
        report = report_markdown(result, f"Slides of {folder.name}: {result['bundle']}")
        (out / "report.md").write_text(report)
        self.stdout.write(report)
        for key in ("slide_accuracy", "slide_roc_auc", "tile_sensitivity_at_1fp", "tile_sensitivity_at_4fp", "dice"):
            value = result[key]
            self.stdout.write(f"{key}: {'n/a' if isinstance(value, float) and math.isnan(value) else f'{value:.4f}'}")
        self.stdout.write(f"wrote {out / 'metrics.json'} and {out / 'report.md'}")
