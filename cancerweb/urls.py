"""The URL map: pages, the versioned REST API with its schema and docs, the admin, and
the operators' health and metrics endpoints."""

from django.contrib import admin
from django.templatetags.static import static
from django.urls import URLPattern, URLResolver, include, path, reverse_lazy
from django.views.generic.base import RedirectView
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import AllowAny

from core.api.docs import RedocDocsView, SwaggerDocsView
from diagnostics.views.monitoring import health, metrics

api_urlpatterns: list[URLPattern | URLResolver] = [
    path("", include("diagnostics.api.urls")),
    path("", include("accounts.api.urls")),
    # The schema and the docs hold no data; integrators read them before they have a token.
    path("schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="api_schema"),
    path(
        "docs/",
        SwaggerDocsView.as_view(url_name="api_schema", permission_classes=[AllowAny]),
        name="api_docs",
    ),
    path("redoc/", RedocDocsView.as_view(url_name="api_schema", permission_classes=[AllowAny]), name="api_redoc"),
]

# The administration's "View site" link: "/" sends an admin (no clinical role) back to
# the administration, a loop; the dashboard is the admins' page of the site.
admin.site.site_url = reverse_lazy("dashboard")  # type: ignore[assignment]  # a lazy str renders as one

urlpatterns = [
    # Browsers ask for /favicon.ico on pages that name no icon (the admin, the API docs).
    path("favicon.ico", RedirectView.as_view(url=static("img/favicon.svg"), permanent=True)),
    path("admin/", admin.site.urls),
    path("health/", health, name="health"),
    path("metrics", metrics, name="metrics"),
    path("accounts/", include("accounts.urls")),
    path("api/v1/", include(api_urlpatterns)),
    path("", include("diagnostics.urls")),
]

# JSON errors under /api/, the usual pages elsewhere.
handler400 = "core.api.errors.handler400"
handler403 = "core.api.errors.handler403"
handler404 = "core.api.errors.handler404"
handler500 = "core.api.errors.handler500"
