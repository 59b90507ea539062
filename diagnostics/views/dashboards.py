"""The agreement dashboard and its CSV export."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accounts.http import AuthedHttpRequest
from core.exports import csv_writer
from diagnostics.selectors.dashboards import SMALL_SAMPLE, dashboard_get
from diagnostics.selectors.drift import drift_status
from diagnostics.views import charts as charts_svg


@require_GET
@never_cache
@login_required
def dashboard(request: AuthedHttpRequest) -> HttpResponse:
    data = dashboard_get(user=request.user)
    charts = [(a, charts_svg.confusion_svg(a), charts_svg.trend_svg(a)) for a in data.agreements]
    context = {
        "charts": charts,
        "stats": data.queue,
        "small_sample": SMALL_SAMPLE,
        "drift": drift_status(user=request.user),
    }
    return render(request, "diagnostics/dashboard.html", context)


@require_GET
@never_cache
@login_required
def dashboard_csv(request: AuthedHttpRequest) -> HttpResponse:
    data = dashboard_get(user=request.user)
    agreements, stats = data.agreements, data.queue
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="cancerweb-agreement.csv"'
    writer = csv_writer(response)
    writer.writerow(["section", "model", "stage", "predicted_stage", "metric", "value"])
    for a in agreements:
        model = str(a.model_version)
        writer.writerow(["overall", model, "", "", "n", a.n])
        writer.writerow(["overall", model, "", "", "accuracy", _figure(a.accuracy)])
        low, high = a.accuracy_ci or (None, None)
        writer.writerow(["overall", model, "", "", "accuracy_ci95_low", _figure(low)])
        writer.writerow(["overall", model, "", "", "accuracy_ci95_high", _figure(high)])
        for st in a.stages:
            for metric in ("precision", "recall", "f1"):
                writer.writerow(["per_stage", model, st.label, "", metric, _figure(getattr(st, metric))])
            writer.writerow(["per_stage", model, st.label, "", "support", st.support])
        for i, row in enumerate(a.confusion):
            for j, count in enumerate(row):
                writer.writerow(["confusion", model, a.labels[i], a.labels[j], "count", count])
        for day, n, acc in a.trend:
            writer.writerow(["trend", model, "", "", f"accuracy {day.isoformat()} (n={n})", f"{acc:.6f}"])
    for metric in ("pending", "oldest_minutes", "median_age_minutes", "signed", "median_signoff_minutes"):
        value = getattr(stats, metric)
        writer.writerow(["queue", "", "", "", metric, "" if value is None else f"{value:.2f}"])
    return response


def _figure(value: float | None) -> str:
    """An undefined figure (no case to count) is an empty cell, never 0."""
    return "" if value is None else f"{value:.6f}"
