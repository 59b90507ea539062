"""/api/v1/: the versioned REST API, its OpenAPI schema and the browsable docs."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

urlpatterns = [
    path("", include("diagnostics.api.urls")),
    path("", include("accounts.api.urls")),
    # The schema and the docs hold no data; integrators read them before they have a token.
    path("schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="api_schema"),
    path(
        "docs/",
        SpectacularSwaggerView.as_view(url_name="api_schema", permission_classes=[AllowAny]),
        name="api_docs",
    ),
    path(
        "redoc/", SpectacularRedocView.as_view(url_name="api_schema", permission_classes=[AllowAny]), name="api_redoc"
    ),
]
