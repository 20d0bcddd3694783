"""Settings of the example project, driven by environment variables.

DATABASE_URL     database (default: a SQLite file, db.sqlite3, beside manage.py)
SECRET_KEY       secret key: required unless DEBUG is on (then a fixed development key)
DEBUG            "1" to turn debug mode on (default off)
ALLOWED_HOSTS    comma-separated host names (default: localhost only)
TIME_ZONE        default time zone of jobs and of the admin (default UTC)
CELERY_BROKER_URL  a Celery broker (redis://127.0.0.1:6379/0): turns the worker fleet on,
                 the jobs of jobs.py marked for it then run on Celery workers
                 (``celery -A settings.celery worker``); ``scripts/demo.sh --fleet`` sets it.
                 Unset (the default), nothing needs Celery.

With DEBUG off the site is served over HTTPS only (what ``manage.py check
--deploy`` asks for). Behind a proxy or load balancer:

SECURE_PROXY_SSL_HEADER         the header by which the proxy says a request came over
                                HTTPS: "HTTP_X_FORWARDED_PROTO" (value "https") or
                                "HTTP_X_FORWARDED_PROTO,https"; only if the proxy always
                                sets or overwrites it
SECURE_SSL_REDIRECT             "0" when the proxy itself redirects HTTP to HTTPS
SECURE_HSTS_SECONDS             Strict-Transport-Security max-age (default one year; 0: none)
SECURE_HSTS_INCLUDE_SUBDOMAINS  "0" when subdomains are not all served over HTTPS
SECURE_HSTS_PRELOAD             "1" to ask browsers to preload HSTS (default off)
SESSION_COOKIE_SECURE, CSRF_COOKIE_SECURE   "0" to send the cookies over plain HTTP too
CSRF_TRUSTED_ORIGINS            comma-separated origins allowed to POST, e.g.
                                "https://admin.example.com"

Booleans are 1/0, true/false, yes/no or on/off; anything else fails at start,
naming the variable.
"""

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(name: str, default: bool) -> bool:
    """A boolean environment variable; a typo fails here rather than flipping a setting."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"The environment variable {name} is {os.environ[name]!r}: "
        "use 1 or 0 (or true/false, yes/no, on/off)."
    )


def _seconds(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ImproperlyConfigured(
            f"The environment variable {name} is {value!r}: use a whole number of seconds."
        )
    return int(value)


def _list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _proxy_ssl_header() -> tuple[str, str] | None:
    value = os.environ.get("SECURE_PROXY_SSL_HEADER", "").strip()
    if not value:
        return None
    header, _, expected = (part.strip() for part in value.partition(","))
    if not header.startswith("HTTP_") or "," in expected:
        raise ImproperlyConfigured(
            f"The environment variable SECURE_PROXY_SSL_HEADER is {value!r}: use the header "
            "as Django names it, e.g. HTTP_X_FORWARDED_PROTO or HTTP_X_FORWARDED_PROTO,https."
        )
    return header, expected or "https"


DEBUG = _flag("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        # Without this a deployment would sign sessions with a key from this
        # public repository. One line: it is what the operator sees at start.
        raise ImproperlyConfigured(
            "SECRET_KEY is not set: set the SECRET_KEY environment variable to a long random "
            "string (python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
            "or DEBUG=1 for local development."
        )
    # Development only; the prefix makes check --deploy call it insecure.
    SECRET_KEY = "django-insecure-example-project-development-key-do-not-deploy"
ALLOWED_HOSTS = _list("ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = _list("CSRF_TRUSTED_ORIGINS")

# HTTPS only when not debugging: what check --deploy asks for, each switchable for
# a deployment behind a proxy that terminates TLS (see the module docstring).
SECURE_PROXY_SSL_HEADER = _proxy_ssl_header()
SECURE_SSL_REDIRECT = _flag("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = _flag("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = _flag("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = _seconds("SECURE_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _flag("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
# Off by default, so check --deploy warns (security.W021) until the owner decides:
# the preload directive lets anyone submit the domain to the browsers' built-in
# lists, which takes months to undo, and it covers every subdomain.
SECURE_HSTS_PRELOAD = _flag("SECURE_HSTS_PRELOAD", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_apscheduler",
    "scheduler",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "settings.urls"
WSGI_APPLICATION = "settings.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}", conn_max_age=60, conn_health_checks=True
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the admin read while the scheduler writes; IMMEDIATE transactions
    # and a busy timeout make writers queue instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

SCHEDULER: dict[str, Any] = {
    "JOB_MODULES": ["jobs"],
}

# The worker fleet (executor="celery"), only with a broker: Celery is an optional extra,
# and without it nothing here imports it. settings/celery.py is the Celery app (it reads
# the CELERY_* settings below); jobs.py declares its fleet jobs when this is set.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "").strip()
if CELERY_BROKER_URL:
    SCHEDULER["CELERY_APP"] = "settings.celery:app"
    # One message at a time per pool process: a run waits in the broker, not behind a
    # long run in a process that prefetched it.
    CELERY_WORKER_PREFETCH_MULTIPLIER = 1
    CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
    CELERY_TASK_IGNORE_RESULT = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        "apscheduler": {"level": os.environ.get("APSCHEDULER_LOG_LEVEL", "WARNING")},
    },
}
