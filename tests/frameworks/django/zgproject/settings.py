"""Minimal settings for the zoneguard Django fixture.

The database comes from ZG_URL (postgresql://user[:password]@host[:port]/name),
parsed here by hand so no extra package is needed.
"""
import os
from urllib.parse import unquote, urlsplit

_url = os.environ.get("ZG_URL")
if not _url:
    raise RuntimeError("ZG_URL is not set (postgresql://user[:pw]@host:port/db)")
_u = urlsplit(_url)
if _u.scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
    raise RuntimeError(f"ZG_URL has an unexpected scheme: {_u.scheme}")

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3
        "HOST": _u.hostname or "127.0.0.1",
        "PORT": str(_u.port or 5432),
        "USER": unquote(_u.username or "postgres"),
        "PASSWORD": unquote(_u.password or ""),
        "NAME": unquote(_u.path.lstrip("/")),
    }
}

SECRET_KEY = "zoneguard-fixture-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "zgproject.urls"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.admin",
    "django.contrib.messages",
    "django.contrib.postgres",  # AddIndexConcurrently / RemoveIndexConcurrently
    "commerce",
]

# Only here so the admin's system checks (run by `migrate`) pass.
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
