import os

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cancerweb.settings")
application = get_wsgi_application()

# gunicorn runs no management command, so no system check: refuse to serve with an
# object store that cannot work (a missing bucket, refused credentials), saying why.
_serious = [message for message in checks.run_checks(tags=["storage"]) if message.is_serious()]
if _serious:
    raise ImproperlyConfigured("; ".join(f"{m.msg} ({m.hint})" for m in _serious))
