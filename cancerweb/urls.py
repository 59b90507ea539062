from django.contrib import admin
from django.urls import include, path

from diagnostics import monitoring

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", monitoring.health, name="health"),
    path("metrics", monitoring.metrics, name="metrics"),
    path("accounts/", include("accounts.urls")),
    path("api/v1/", include("cancerweb.api.urls")),
    path("", include("diagnostics.urls")),
]

# JSON errors under /api/, the usual pages elsewhere.
handler400 = "cancerweb.api.errors.handler400"
handler403 = "cancerweb.api.errors.handler403"
handler404 = "cancerweb.api.errors.handler404"
handler500 = "cancerweb.api.errors.handler500"
