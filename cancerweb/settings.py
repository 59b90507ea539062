"""CancerWeb settings: one file, read from the environment, fail-closed.

Every value comes from an environment variable. Missing values that matter for
safety (the secret key, the database, the broker) raise at start-up instead of
falling back to something insecure; the demo (`CANCERWEB_DEMO=1`) is the only
mode that fills them with local defaults, and it binds to localhost only.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from cancerweb.env import (
    env_bool,
    env_float,
    env_int,
    env_list,
    env_rate,
    env_storage_url,
    generate_key_entry,
    parse_key_entries,
    s3_storage_backend,
)

BASE_DIR = Path(__file__).resolve().parent.parent


# The demo runs everything embedded (SQLite, filesystem broker, local files).
DEMO = env_bool("CANCERWEB_DEMO", False)
DATA_DIR = Path(os.environ.get("CANCERWEB_DATA_DIR") or BASE_DIR / "var" / "demo").resolve()


def _demo_secret_key() -> str:
    # Persisted so demo sessions survive a restart; never used outside the demo.
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if DEMO:
        SECRET_KEY = _demo_secret_key()
    else:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set (or CANCERWEB_DEMO=1 for the local demo)")
if len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be at least 32 characters long")

DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEMO else [])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must list the host names this site answers to")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "guardian",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "core",
    "accounts",
    "diagnostics",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before anything that reads the database: a clear 503 when PostgreSQL is down.
    "core.middleware.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "accounts.middleware.SessionTimeoutMiddleware",
    "accounts.middleware.OTPRequiredMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.middleware.NotFoundMiddleware",
    "accounts.middleware.SecurityHeadersMiddleware",
    # Last, so it turns a lockout raised by the login view's authenticate() into a response.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    # First: refuses locked-out users and addresses before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    # Object permissions (care units, grants per case); global permissions never imply these.
    "guardian.backends.ObjectPermissionBackend",
]

ROOT_URLCONF = "cancerweb.urls"
WSGI_APPLICATION = "cancerweb.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.roles",
                "diagnostics.context_processors.notifications",
            ],
        },
    },
]

_database_url = os.environ.get("DATABASE_URL", "")
if not _database_url:
    if DEMO:
        _database_url = f"sqlite:///{DATA_DIR / 'db.sqlite3'}"
    else:
        raise ImproperlyConfigured("DATABASE_URL must be set, e.g. postgres://user@host:5432/cancerweb")
try:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60, conn_health_checks=True)}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is malformed: {exc}") from exc
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The demo's worker and web server threads share one SQLite file. WAL lets readers
    # (thumbnails, pages) go on while one writer commits; every transaction starts with
    # BEGIN IMMEDIATE, so a writer queues for the write lock at its start (waiting up to
    # the busy timeout) instead of failing with "database is locked" when a read
    # transaction tries to become a write one; synchronous=NORMAL is WAL's safe setting.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": env_int("CANCERWEB_SQLITE_BUSY_TIMEOUT_S", 30, minimum=1),
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
else:
    # A request or worker must not hang on an unreachable database: fail fast and
    # answer 503 (web) or leave the job to the sweeper (worker).
    _connect_timeout = env_int("CANCERWEB_DB_CONNECT_TIMEOUT", 5, minimum=1)
    DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = _connect_timeout
    # Connection pool (Django's native psycopg pool) for web processes: gunicorn's
    # threads share a few open connections instead of one per thread, and a request
    # waits at most the connect timeout for one (then 503). Off (0) by default and in
    # Celery workers: a pool opened before the prefork pool forks would share its
    # sockets with the children; a worker keeps one persistent connection instead.
    DB_POOL_MAX_SIZE = env_int("CANCERWEB_DB_POOL_MAX_SIZE", 0, minimum=0)
    if DB_POOL_MAX_SIZE:
        # CONN_HEALTH_CHECKS (on) makes Django check each connection the pool hands out,
        # so one the database dropped (a restart) is replaced, not used.
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps connections; Django must not
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": DB_POOL_MAX_SIZE,
            "timeout": _connect_timeout,
            "max_idle": 300,
        }

AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT") or DATA_DIR / "staticfiles")

# Stored objects (scans, heat maps, slides; model bundles when several hosts share
# them) go through Django's storage API: a local folder by default, or an
# S3-compatible object store (django-storages' S3 backend) when CANCERWEB_STORAGE_URL
# is s3://bucket[/prefix]. Workers on other machines then read what the web stored.
SCAN_STORAGE_DIR = Path(os.environ.get("CANCERWEB_SCAN_DIR") or DATA_DIR / "scans")
OBJECT_STORAGE, S3_BUCKET, S3_PREFIX = env_storage_url("CANCERWEB_STORAGE_URL")
STORAGES: dict[str, dict[str, object]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "scans": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(SCAN_STORAGE_DIR), "base_url": None},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
if OBJECT_STORAGE == "s3":
    _s3_key_id = os.environ.get("CANCERWEB_S3_ACCESS_KEY_ID", "")
    _s3_secret = os.environ.get("CANCERWEB_S3_SECRET_ACCESS_KEY", "")
    if bool(_s3_key_id) != bool(_s3_secret):
        raise ImproperlyConfigured(
            "set both CANCERWEB_S3_ACCESS_KEY_ID and CANCERWEB_S3_SECRET_ACCESS_KEY, or neither "
            "(then boto3 finds credentials itself, e.g. an instance role)"
        )
    _s3_endpoint = os.environ.get("CANCERWEB_S3_ENDPOINT_URL", "")
    if _s3_endpoint and not _s3_endpoint.startswith(("http://", "https://")):
        raise ImproperlyConfigured(f"CANCERWEB_S3_ENDPOINT_URL must be an http(s):// URL, got {_s3_endpoint!r}")
    _s3_region = os.environ.get("CANCERWEB_S3_REGION") or "us-east-1"
    _s3_connect_timeout = env_int("CANCERWEB_S3_CONNECT_TIMEOUT", 3, minimum=1)

    def _s3(folder: str) -> dict[str, object]:
        return s3_storage_backend(
            bucket=S3_BUCKET,
            location="/".join(p for p in (S3_PREFIX, folder) if p),
            endpoint_url=_s3_endpoint,
            region=_s3_region,
            access_key=_s3_key_id,
            secret_key=_s3_secret,
            connect_timeout=_s3_connect_timeout,
        )

    STORAGES["scans"] = _s3("scans")
    # Model bundles, published at registration and fetched by worker hosts that never
    # saw them (diagnostics/model_store.py); not encrypted (no patient data), SHA-256 checked.
    STORAGES["models"] = _s3("models")
MEDIA_ROOT = DATA_DIR / "media"


def _demo_encryption_keys() -> str:
    # Like the demo's secret key: generated once, kept beside the data it protects.
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    key_file = DATA_DIR / "encryption_keys"
    if not key_file.exists():
        key_file.write_text(generate_key_entry("demo1"))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


def _encryption_keys() -> list[tuple[str, bytes]]:
    """CANCERWEB_ENCRYPTION_KEYS: comma-separated ``id:base64key`` (32-byte AES-256 keys),
    the first encrypts new objects, all of them decrypt (rotation)."""
    raw = os.environ.get("CANCERWEB_ENCRYPTION_KEYS", "")
    if not raw.strip():
        if DEMO:
            raw = _demo_encryption_keys()
        else:
            raise ImproperlyConfigured(
                "CANCERWEB_ENCRYPTION_KEYS must be set (id:base64 of 32 random bytes, comma-separated, current first)"
            )
    try:
        return list(parse_key_entries(raw))
    except ValueError as exc:
        raise ImproperlyConfigured(f"CANCERWEB_ENCRYPTION_KEYS is malformed: {exc}") from exc


# Stored scans and heat maps are encrypted at rest with AES-256-GCM (diagnostics/storage.py).
ENCRYPTION_KEYS = _encryption_keys()

# Patient pseudonyms: the whole reference must match this pattern (Python regular
# expression), checked by the case service on every door. The default: capitals,
# digits, dot, dash and underscore, up to 64, starting with a capital or digit, e.g.
# PSN-2026-0042; a name typed in the usual mixed case ("Smith_John") is refused. A site
# sets its own scheme (e.g. ^HOSP-[0-9]{8}$) and a hint shown with the refusal.
PSEUDONYM_PATTERN = os.environ.get("CANCERWEB_PSEUDONYM_PATTERN") or r"^[A-Z0-9][A-Z0-9._-]{0,63}$"
PSEUDONYM_HINT = os.environ.get("CANCERWEB_PSEUDONYM_HINT") or (
    "capital letters, digits, dot, dash or underscore, e.g. PSN-2026-0042"
)
try:
    re.compile(PSEUDONYM_PATTERN)
except re.error as exc:
    raise ImproperlyConfigured(f"CANCERWEB_PSEUDONYM_PATTERN is not a valid regular expression: {exc}") from exc

# Upload limits. A 4k x 4k slide photograph is 16 MP; a 60 MP cap leaves room for
# large scanner exports while keeping the worker's decode under a few hundred MB.
UPLOAD_MAX_BYTES = env_int("CANCERWEB_UPLOAD_MAX_BYTES", 50 * 1024 * 1024, minimum=1)
UPLOAD_MAX_PIXELS = env_int("CANCERWEB_UPLOAD_MAX_PIXELS", 60_000_000, minimum=1)
UPLOAD_MAX_FILES = env_int("CANCERWEB_UPLOAD_MAX_FILES", 50, minimum=1)
DATA_UPLOAD_MAX_NUMBER_FILES = UPLOAD_MAX_FILES
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_PERMISSIONS = 0o600

# Whole-slide images (issue 12): resumable uploads up to SLIDE_UPLOAD_MAX_BYTES, stored as
# encrypted chunks; read through a bounded local cache of decrypted copies.
SLIDE_UPLOAD_MAX_BYTES = env_int("CANCERWEB_SLIDE_MAX_BYTES", 5 * 1024**3, minimum=1)
# One resumable request (tus PATCH) carries at most one chunk; each is encrypted and
# stored on its own, so an interrupted request loses at most this much.
SLIDE_CHUNK_BYTES = env_int("CANCERWEB_SLIDE_CHUNK_BYTES", 8 * 1024 * 1024, minimum=64 * 1024)
# 10^10 px is a large 40x slide (100,000 x 100,000); a declared 10^12 px is refused.
SLIDE_MAX_PIXELS = env_int("CANCERWEB_SLIDE_MAX_PIXELS", 40_000_000_000, minimum=1)
SLIDE_MAX_TILES = env_int("CANCERWEB_SLIDE_MAX_TILES", 200_000, minimum=1)
SLIDE_UPLOAD_EXPIRY_S = env_int("CANCERWEB_SLIDE_UPLOAD_EXPIRY_S", 24 * 3600, minimum=60)
SLIDE_CACHE_DIR = Path(os.environ.get("CANCERWEB_SLIDE_CACHE_DIR") or DATA_DIR / "slide-cache")
SLIDE_CACHE_MAX_BYTES = env_int("CANCERWEB_SLIDE_CACHE_MAX_BYTES", 20 * 1024**3, minimum=1)
SLIDE_CACHE_IDLE_S = env_int("CANCERWEB_SLIDE_CACHE_IDLE_S", 900, minimum=1)
# Tiles per model call and threads reading tiles ahead of the network.
SLIDE_BATCH_SIZE = env_int("CANCERWEB_SLIDE_BATCH_SIZE", 64, minimum=1)
SLIDE_READ_THREADS = env_int("CANCERWEB_SLIDE_READ_THREADS", 3, minimum=1)

# Model bundles: only folders inside this one can be registered; the registry stores the
# folder's name relative to it (so every host finds the bundle in its own model folder).
MODEL_DIR = Path(os.environ.get("CANCERWEB_MODEL_DIR") or BASE_DIR / "models").resolve()
# Where a worker host keeps the bundles it fetched from object storage (one folder per
# model file SHA-256); used only when a bundle is not in its own MODEL_DIR.
MODEL_CACHE_DIR = Path(os.environ.get("CANCERWEB_MODEL_CACHE_DIR") or DATA_DIR / "model-cache").resolve()

# Celery. The job row in the database is the source of truth; the broker only carries ids.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
if not CELERY_BROKER_URL:
    if DEMO:
        CELERY_BROKER_URL = "filesystem://"
    else:
        raise ImproperlyConfigured("CELERY_BROKER_URL must be set, e.g. redis://127.0.0.1:6379/0")
CELERY_TASK_HARD_TIME_LIMIT = env_int("CELERY_TASK_HARD_TIME_LIMIT", 300, minimum=10)
# Below the hard limit, so the task can note its failure before it is killed.
CELERY_TASK_SOFT_TIME_LIMIT = max(CELERY_TASK_HARD_TIME_LIMIT - 30, CELERY_TASK_HARD_TIME_LIMIT * 3 // 4)
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
    # Above the hard limit, so Redis does not hand a running task to a second worker.
    "visibility_timeout": CELERY_TASK_HARD_TIME_LIMIT * 2,
}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = DATA_DIR / "broker"
    for sub in ("queue", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        {
            "data_folder_in": str(_broker_dir / "queue"),
            "data_folder_out": str(_broker_dir / "queue"),
            "processed_folder": str(_broker_dir / "processed"),
            # Exchange tables (remote control, beat) go with the broker's data, not the working directory.
            "control_folder": str(_broker_dir / "control"),
            "store_processed": False,
        }
    )
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker takes up to this many waiting jobs into one compiled model call
# (batch 8 gives about twice the images per second of batch 1 on CPU: docs/performance.md).
INFERENCE_BATCH_SIZE = env_int("CANCERWEB_INFERENCE_BATCH_SIZE", 8, minimum=1)
# Threads that decode a batch's images while others are decoded (Pillow releases the GIL).
INFERENCE_DECODE_THREADS = env_int("CANCERWEB_INFERENCE_DECODE_THREADS", 4, minimum=1)
# Dynamic batching: when fewer than INFERENCE_BATCH_SIZE jobs wait, a worker waits up to
# this long for more to arrive before it runs what it has (0: never waits).
INFERENCE_MAX_DELAY_MS = env_int("CANCERWEB_INFERENCE_MAX_DELAY_MS", 10, minimum=0)
# One task keeps claiming the next batch (decoded while the network runs the current one)
# for at most this long, well inside the soft time limit, then leaves the rest to others.
INFERENCE_DRAIN_S = env_int("CANCERWEB_INFERENCE_DRAIN_S", 60, minimum=0)
# float32 (default) or bfloat16 arithmetic in the network. A worker set to bfloat16
# refuses to start when the probabilities on a bundle's check images move by more than
# diagnostics.ml.runner.BFLOAT16_TOLERANCE.
INFERENCE_PRECISION = os.environ.get("CANCERWEB_INFERENCE_PRECISION", "float32").strip() or "float32"
if INFERENCE_PRECISION not in ("float32", "bfloat16"):
    raise ImproperlyConfigured(
        f"CANCERWEB_INFERENCE_PRECISION must be float32 or bfloat16, got {INFERENCE_PRECISION!r}"
    )
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # An unreachable Redis must fail a publish within seconds, not hang an upload.
    CELERY_BROKER_TRANSPORT_OPTIONS["socket_connect_timeout"] = 2
# Bounded publish retry (about 1.5 s in all): an upload while Redis is down is still
# accepted; its job stays queued in the database and the sweeper sends it later.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}

# The job row is the truth. The sweeper re-sends jobs left queued past
# JOB_QUEUED_DEADLINE (a lost broker message), puts jobs left running past
# JOB_RUNNING_DEADLINE back in the queue (a lost worker), and fails a job with a
# stated reason once it has been claimed JOB_MAX_ATTEMPTS times.
JOB_QUEUED_DEADLINE_S = env_int("CANCERWEB_JOB_QUEUED_DEADLINE_S", 300, minimum=1)
JOB_RUNNING_DEADLINE_S = env_int("CANCERWEB_JOB_RUNNING_DEADLINE_S", CELERY_TASK_HARD_TIME_LIMIT + 60, minimum=1)
if JOB_RUNNING_DEADLINE_S <= CELERY_TASK_HARD_TIME_LIMIT:
    # A deadline under the hard limit would hand a healthy, slow task to a second worker.
    raise ImproperlyConfigured(
        f"CANCERWEB_JOB_RUNNING_DEADLINE_S ({JOB_RUNNING_DEADLINE_S}) must exceed "
        f"CELERY_TASK_HARD_TIME_LIMIT ({CELERY_TASK_HARD_TIME_LIMIT})"
    )
JOB_MAX_ATTEMPTS = env_int("CANCERWEB_JOB_MAX_ATTEMPTS", 3, minimum=1)
JOB_SWEEP_INTERVAL_S = env_int("CANCERWEB_JOB_SWEEP_INTERVAL_S", 60, minimum=1)
# Each worker writes a heartbeat row this often; /health/ calls workers absent
# after three missed beats.
WORKER_HEARTBEAT_S = env_int("CANCERWEB_WORKER_HEARTBEAT_S", 10, minimum=1)
# /health/ turns unhealthy when the oldest queued job is older than this.
HEALTH_MAX_QUEUED_AGE_S = env_int("CANCERWEB_HEALTH_MAX_QUEUED_AGE_S", 2 * JOB_QUEUED_DEADLINE_S, minimum=1)
# /health/ and /metrics answer requests from this machine (no proxy header) or
# carrying "Authorization: Bearer <token>" with this token; nobody else.
MONITORING_TOKEN = os.environ.get("CANCERWEB_MONITORING_TOKEN", "")
if MONITORING_TOKEN and len(MONITORING_TOKEN) < 24:
    raise ImproperlyConfigured("CANCERWEB_MONITORING_TOKEN must be at least 24 characters long")
CELERY_TASK_ALWAYS_EAGER = False
# A job that found the image store down goes back to the queue and is sent again after this pause.
STORAGE_RETRY_DELAY_S = env_int("CANCERWEB_STORAGE_RETRY_DELAY_S", 10, minimum=1)

# Hospital integration (diagnostics/services/integration.py). A signed result the PACS
# did not take is sent again after BASE, 2 x BASE, ... at most MAX seconds apart, up to
# MAX_ATTEMPTS times (by default about a day at the cap) before it waits for an operator.
INTEGRATION_RETRY_BASE_S = env_int("CANCERWEB_INTEGRATION_RETRY_BASE_S", 10, minimum=1)
INTEGRATION_RETRY_MAX_S = env_int("CANCERWEB_INTEGRATION_RETRY_MAX_S", 300, minimum=1)
INTEGRATION_SEND_MAX_ATTEMPTS = env_int("CANCERWEB_INTEGRATION_SEND_MAX_ATTEMPTS", 300, minimum=1)
INTEGRATION_SWEEP_INTERVAL_S = env_int("CANCERWEB_INTEGRATION_SWEEP_INTERVAL_S", 30, minimum=1)
INTEGRATION_PULL_INTERVAL_S = env_int("CANCERWEB_INTEGRATION_PULL_INTERVAL_S", 60, minimum=5)
INTEGRATION_HTTP_TIMEOUT_S = env_int("CANCERWEB_INTEGRATION_HTTP_TIMEOUT_S", 20, minimum=1)
# The largest STOW-RS request body: refused from its Content-Length before it is read.
INTEGRATION_STOW_MAX_BYTES = env_int("CANCERWEB_INTEGRATION_STOW_MAX_BYTES", 512 * 1024 * 1024, minimum=1024)
# The storage sweep deletes unreferenced content-addressed objects older than this (an
# upload still inside its transaction is younger), every STORAGE_SWEEP_INTERVAL_S.
STORAGE_ORPHAN_GRACE_S = env_int("CANCERWEB_STORAGE_ORPHAN_GRACE_S", 3600, minimum=60)
STORAGE_SWEEP_INTERVAL_S = env_int("CANCERWEB_STORAGE_SWEEP_INTERVAL_S", 3600, minimum=60)

# A polled worklist whose care units saw no change answers 304; it is re-read at least
# this often anyway, so a change the counters missed shows within this many seconds.
WORKLIST_MAX_STALE_S = env_int("CANCERWEB_WORKLIST_MAX_STALE_S", 10, minimum=1)

# Notifications. A pending review older than this reminds every physician,
# checked by a periodic task (run `celery -A cancerweb beat` next to the workers).
REVIEW_OVERDUE_MINUTES = env_int("CANCERWEB_REVIEW_OVERDUE_MINUTES", 240, minimum=1)
# `celery beat` (or `worker -B`, as bin/demo runs it) sends these; `manage.py sweep_jobs
# --loop` is the sweeper's alternative where beat is not run.
CELERY_BEAT_SCHEDULE = {
    "notify-overdue-reviews": {"task": "diagnostics.notify_overdue_reviews", "schedule": 300.0},
    "sweep-inference-jobs": {"task": "diagnostics.sweep_jobs", "schedule": float(JOB_SWEEP_INTERVAL_S)},
    "sweep-slide-uploads": {"task": "diagnostics.sweep_slide_uploads", "schedule": float(JOB_SWEEP_INTERVAL_S)},
    "sweep-storage-orphans": {"task": "diagnostics.sweep_storage", "schedule": float(STORAGE_SWEEP_INTERVAL_S)},
    "send-signed-results": {"task": "diagnostics.sweep_results", "schedule": float(INTEGRATION_SWEEP_INTERVAL_S)},
    "pull-pacs-studies": {"task": "diagnostics.pull_studies", "schedule": float(INTEGRATION_PULL_INTERVAL_S)},
}
# Drift monitoring of each active model version (diagnostics/services/drift.py), by a
# periodic task. The reference is the version's first DRIFT_BASELINE_N predictions
# (the bundles carry no input statistics of their training data); each check compares
# the last DRIFT_WINDOW predictions with it. PSI above 0.2 is the usual "significant
# shift" rule of thumb; the confidence distribution uses a two-sample KS test.
DRIFT_INTERVAL_S = env_int("CANCERWEB_DRIFT_INTERVAL_S", 3600, minimum=10)
DRIFT_BASELINE_N = env_int("CANCERWEB_DRIFT_BASELINE_N", 50, minimum=10)
DRIFT_WINDOW = env_int("CANCERWEB_DRIFT_WINDOW", 200, minimum=10)
DRIFT_MIN_WINDOW = env_int("CANCERWEB_DRIFT_MIN_WINDOW", 20, minimum=5)
DRIFT_PSI_THRESHOLD = env_float("CANCERWEB_DRIFT_PSI_THRESHOLD", 0.2, minimum=0.001)
DRIFT_KS_P = env_float("CANCERWEB_DRIFT_KS_P", 0.01, minimum=1e-12, maximum=0.5)
DRIFT_MIN_AGREEMENT = env_float("CANCERWEB_DRIFT_MIN_AGREEMENT", 0.7, minimum=0.0, maximum=1.0)
DRIFT_MIN_SIGNED = env_int("CANCERWEB_DRIFT_MIN_SIGNED", 10, minimum=1)
CELERY_BEAT_SCHEDULE["check-model-drift"] = {"task": "diagnostics.check_drift", "schedule": float(DRIFT_INTERVAL_S)}
# Absolute address used in e-mails; without it the e-mail only says to sign in.
CANCERWEB_BASE_URL = os.environ.get("CANCERWEB_BASE_URL", "")
# The demo writes each e-mail as a file into EMAIL_FILE_PATH ($CANCERWEB_DATA_DIR/mail,
# printed by bin/demo): the web server and the worker (overdue reminders) both send.
EMAIL_BACKEND = os.environ.get(
    "DJANGO_EMAIL_BACKEND",
    "django.core.mail.backends.filebased.EmailBackend" if DEMO else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_FILE_PATH = Path(os.environ.get("DJANGO_EMAIL_FILE_PATH") or DATA_DIR / "mail")
EMAIL_HOST = os.environ.get("DJANGO_EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("DJANGO_EMAIL_PORT", 25, minimum=1)
DEFAULT_FROM_EMAIL = os.environ.get("DJANGO_DEFAULT_FROM_EMAIL", "cancerweb@localhost")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("CANCERWEB_LOG_LEVEL", "INFO")},
}

# Security headers and cookies. TLS is terminated in front of the app outside the demo.
_secure = not DEMO and not DEBUG and env_bool("CANCERWEB_HTTPS", True)
SESSION_COOKIE_SECURE = _secure
CSRF_COOKIE_SECURE = _secure
SECURE_SSL_REDIRECT = _secure and env_bool("CANCERWEB_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = 31536000 if _secure else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = _secure
SECURE_HSTS_PRELOAD = _secure
# Probes on this machine speak plain HTTP to /health/ and /metrics.
SECURE_REDIRECT_EXEMPT = [r"^health/$", r"^metrics$"]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if _secure else None
SESSION_COOKIE_HTTPONLY = True
# Absolute limit: a session ends 12 h after login whatever the activity (the cookie
# age and accounts.middleware.SessionTimeoutMiddleware); idle limit 30 min.
SESSION_COOKIE_AGE = 12 * 60 * 60
SESSION_ABSOLUTE_TIMEOUT_SECONDS = 12 * 60 * 60
SESSION_IDLE_TIMEOUT_SECONDS = env_int("CANCERWEB_IDLE_TIMEOUT_SECONDS", 30 * 60, minimum=60)
# Content Security Policy, one for every page: everything from this site, no inline
# script and no 'unsafe-inline' style, no framing. "{nonce}" becomes a fresh value per
# response (accounts.middleware.SecurityHeadersMiddleware): the <style> elements that a
# vendored library makes at run time carry it (Redoc, OpenSeadragon's marker). Two
# fixed ones Redoc makes while its bundle loads, before it can know the nonce, are
# allowed by hash: an empty element (its rules then go in through the CSSOM) and the
# bundle's own stylesheet. Upgrading drf-spectacular-sidecar may change the second:
# tests/browser_tests/test_every_page.py fails on any violation and names the new hash.
_CSP_STYLE_HASHES = (
    "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=' "  # the empty string
    "'sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc='"  # Redoc 2.5.4's bundled CSS
)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; "
    f"style-src 'self' 'nonce-{{nonce}}' {_CSP_STYLE_HASHES}; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)

# Signing: after this many wrong passwords or authenticator codes in one session the
# signing form locks and the session must log in again (a token is revoked).
SIGNING_MAX_FAILURES = env_int("CANCERWEB_SIGNING_MAX_FAILURES", 5, minimum=1)
# The same for the second factor after login: this many wrong codes end the session.
OTP_MAX_FAILURES = env_int("CANCERWEB_OTP_MAX_FAILURES", 5, minimum=1)

# Lockout (django-axes): CANCERWEB_LOGIN_FAILURE_LIMIT (5) failures for one user name
# from one address lock that name at that address for 15 minutes (the 5th failure
# already answers "locked", and the next attempt is refused even with the right
# password); other users at the same workstation or NAT are not affected. An address
# as a whole is locked after CANCERWEB_LOGIN_ADDRESS_FAILURE_LIMIT (30) failures across
# all names (accounts.lockout.LockoutHandler). Admins unlock at /accounts/lockouts/.
AXES_FAILURE_LIMIT = env_int("CANCERWEB_LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_ADDRESS_FAILURE_LIMIT = env_int("CANCERWEB_LOGIN_ADDRESS_FAILURE_LIMIT", 30, minimum=1)
if LOGIN_ADDRESS_FAILURE_LIMIT <= AXES_FAILURE_LIMIT:
    raise ImproperlyConfigured(
        f"CANCERWEB_LOGIN_ADDRESS_FAILURE_LIMIT ({LOGIN_ADDRESS_FAILURE_LIMIT}) must exceed "
        f"CANCERWEB_LOGIN_FAILURE_LIMIT ({AXES_FAILURE_LIMIT}): one user's typos must not lock a shared address"
    )
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_HANDLER = "accounts.lockout.LockoutHandler"
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False  # its log lines name the user; the audit trail records failures instead
# No unlock door in the Django admin: lockouts are lifted on /accounts/lockouts/, audited.
AXES_ENABLE_ADMIN = False

# Guardian: no shared "anonymous" user row; anonymous visitors see nothing clinical.
ANONYMOUS_USER_NAME = None
GUARDIAN_RAISE_403 = False

# Second factor (django-otp TOTP) for physicians and admins. The demo users may skip
# it in the demo only (CANCERWEB_DEMO=1 and CANCERWEB_DEMO_OTP_EXEMPT, default on).
OTP_TOTP_ISSUER = "CancerWeb"
OTP_DEMO_EXEMPT = DEMO and env_bool("CANCERWEB_DEMO_OTP_EXEMPT", True)
SECURE_CONTENT_TYPE_NOSNIFF = True
# A stale form answers the styled 403 page with a way on, not Django's technical one.
CSRF_FAILURE_VIEW = "core.api.errors.csrf_failure"
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- REST API (/api/v1/) ---------------------------------------------------------
# Throttle counters live in this cache, so every web process shares them. With a
# Redis broker the cache defaults to the same Redis (its keys are prefixed); the
# demo's filesystem broker gets a per-process memory cache.
_cache_url = os.environ.get("CANCERWEB_CACHE_URL", "")
if not _cache_url and CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    _cache_url = CELERY_BROKER_URL
if _cache_url.startswith(("redis://", "rediss://")):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": _cache_url,
            "KEY_PREFIX": "cw",
        }
    }
elif _cache_url in ("", "locmem://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "cancerweb"}}
else:
    raise ImproperlyConfigured("CANCERWEB_CACHE_URL must be redis://host:port/db or locmem://")


# API tokens for machines expire: none may live longer than this many days.
API_TOKEN_MAX_DAYS = env_int("CANCERWEB_API_TOKEN_MAX_DAYS", 90, minimum=1)
REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header makes a missing login a 401, not a 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": [
        "accounts.api.throttling.AnonymousRateThrottle",
        "accounts.api.throttling.PerUserRateThrottle",
        "accounts.api.throttling.PerTokenRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_rate("CANCERWEB_API_RATE_ANON", "60/minute"),
        "user": env_rate("CANCERWEB_API_RATE_USER", "600/minute"),
        "token": env_rate("CANCERWEB_API_RATE_TOKEN", "300/minute"),
    },
    "DEFAULT_PAGINATION_CLASS": "core.api.pagination.Pagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "CancerWeb API",
    "DESCRIPTION": (
        "Cases, scans, inference jobs, the physician's review queue and signed decisions, "
        "the model registry and the audit trail. A prediction is never a result until a physician signs it."
    ),
    "VERSION": "1.0.0",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.api.schema.add_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "diagnostics.models.InferenceJob.Status",
        "ModelStatusEnum": "diagnostics.models.ModelVersion.Status",
        "ReviewItemStatusEnum": "diagnostics.models.ReviewItem.Status",
        "ScanStatusEnum": "diagnostics.api.serializers.SCAN_STATUS_CODES",
    },
}
