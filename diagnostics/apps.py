from django.apps import AppConfig


class DiagnosticsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "diagnostics"

    def ready(self) -> None:
        from diagnostics import checks, worker  # noqa: F401  (checks registers itself)

        worker.connect()
