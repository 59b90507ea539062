"""The agreement dashboard and its CSV export."""

from __future__ import annotations

import csv

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accounts.http import AuthedHttpRequest
from diagnostics.selectors.dashboards import dashboard_get
from diagnostics.selectors.drift import drift_status
from diagnostics.views import charts as charts_svg


@require_GET
@never_cache
@login_required
def dashboard(request: AuthedHttpRequest) -> HttpResponse:
    data = dashboard_get(user=request.user)
    charts = [(a, charts_svg.confusion_svg(a), charts_svg.trend_svg(a)) for a in data.agreements]
    return render(
        request,
        "diagnostics/dashboard.html",
        {"charts": charts, "stats": data.queue, "drift": drift_status(user=request.user)},
    )


@require_GET
@never_cache
@login_required
def dashboard_csv(request: AuthedHttpRequest) -> HttpResponse:
    data = dashboard_get(user=request.user)
    agreements, stats = data.agreements, data.queue
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="cancerweb-agreement.csv"'
    writer = csv.writer(response)
    writer.writerow(["section", "model", "stage", "predicted_stage", "metric", "value"])
    for a in agreements:
        model = str(a.model_version)
        writer.writerow(["overall", model, "", "", "n", a.n])
        writer.writerow(["overall", model, "", "", "accuracy", f"{a.accuracy:.6f}"])
        for st in a.stages:
            for metric in ("precision", "recall", "f1"):
                writer.writerow(["per_stage", model, st.label, "", metric, f"{getattr(st, metric):.6f}"])
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
