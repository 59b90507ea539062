"""The API's documentation pages (Swagger UI and Redoc) under the app's own
Content-Security-Policy: the assets come from drf-spectacular-sidecar (served by this
site, no CDN), the start-up code is a static file (no inline script or style), and no
font or validator is fetched from another host."""

from __future__ import annotations

from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView


class SwaggerDocsView(SpectacularSwaggerView):
    template_name = "api/swagger_ui.html"


class RedocDocsView(SpectacularRedocView):
    template_name = "api/redoc.html"
