from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from diagnostics.inference import bundle_dir_for
from diagnostics.models import ModelVersion


def resolve_bundle(*, model: str | None, bundle: str | None, task: str | None = None) -> Path:
    """A bundle folder from --bundle, from --model 'NAME VERSION' / 'VERSION' / UUID, or
    the active model (of --task, or the only one)."""
    if bundle:
        return Path(bundle)
    qs = ModelVersion.objects.all()
    if model:
        parts = model.split()
        if len(parts) == 2:
            qs = qs.filter(name=parts[0], version=parts[1])
        else:
            try:
                from uuid import UUID

                qs = qs.filter(uuid=UUID(model))
            except ValueError:
                qs = qs.filter(version=model)
        found = list(qs[:2])
        if not found:
            raise CommandError(f"no registered model version matches '{model}'")
        if len(found) > 1:
            raise CommandError(f"'{model}' matches several versions; give 'NAME VERSION' or the UUID")
        return bundle_dir_for(found[0])
    active = qs.filter(status=ModelVersion.Status.ACTIVE)
    if task:
        active = active.filter(task=task)
    found = list(active[:2])
    if not found:
        raise CommandError("no active model" + (f" for task '{task}'" if task else "") + "; give --bundle or --model")
    if len(found) > 1:
        tasks = "; ".join(ModelVersion.objects.filter(status="active").values_list("task", flat=True))
        raise CommandError(f"several tasks have an active model ({tasks}); choose one with --task")
    return bundle_dir_for(found[0])


class Command(BaseCommand):
    help = "Evaluate a model on FOLDER (one sub-folder per label): metrics.json, PNG plots, report.md in --out."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder")
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--model", help="registered version: 'NAME VERSION', VERSION or UUID")
        group.add_argument("--bundle", help="a bundle folder instead of a registered version")
        parser.add_argument("--task", help="with neither: the active model of this task")
        parser.add_argument("--out", required=True)
        parser.add_argument(
            "--report-split",
            action="store_true",
            help="FOLDER is the bundle's training data: evaluate its report split (test split or validation half B)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from diagnostics.ml.bundle import BundleError
        from diagnostics.ml.evaluate import EvaluationError, evaluate_bundle

        bundle = resolve_bundle(model=options["model"], bundle=options["bundle"], task=options["task"])
        try:
            result = evaluate_bundle(bundle, options["folder"], options["out"], report_split=options["report_split"])
        except (BundleError, EvaluationError) as exc:
            raise CommandError(str(exc)) from exc
        ci = result.get("ci95", {})

        def interval(key: str) -> str:
            return f" ({ci[key][0]:.3f}-{ci[key][1]:.3f})" if key in ci else ""

        self.stdout.write(
            f"{result['model']} on {result['n']} images"
            + (f" ({result['split']})" if "split" in result else "")
            + f": accuracy {result['accuracy']:.4f}{interval('accuracy')}, balanced accuracy "
            f"{result['balanced_accuracy']:.4f}{interval('balanced_accuracy')}, ROC AUC {result['roc_auc']:.4f}"
            f"{interval('roc_auc')}, ECE {result['ece']:.4f}{interval('ece')}; "
            f"wrote {options['out']}/metrics.json, report.md and plots"
        )
