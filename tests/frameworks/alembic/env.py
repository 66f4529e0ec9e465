"""Alembic environment: online mode only, URL from ZG_URL."""
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def _url() -> str:
    url = os.environ.get("ZG_URL")
    if not url:
        raise SystemExit("ZG_URL is not set (postgresql://user[:pw]@host:port/db)")
    # Accept a plain libpq-style URL and pin the psycopg 3 driver.
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise SystemExit(f"ZG_URL has an unexpected scheme: {url}")


def run_migrations_online() -> None:
    # NullPool: one connection per run, closed at the end (nothing lingers on
    # the proxy between the upgrade and downgrade runs).
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline mode is not used by this fixture")
run_migrations_online()
