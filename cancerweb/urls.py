from django.contrib import admin
from django.urls import include, path

from diagnostics import monitoring

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", monitoring.health, name="health"),
    path("metrics", monitoring.metrics, name="metrics"),
    path("accounts/", include("accounts.urls")),
    path("", include("diagnostics.urls")),
]
