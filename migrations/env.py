"""Alembic environment, after Alembic's generic template.

clipvdb passes its own connection in `config.attributes["connection"]`; run by hand, the URL comes
from alembic.ini or CLIPVDB_DATABASE_URL. Migrations run under an advisory lock, so two upgrades
started at once run one after the other (the second finds nothing left to do).
"""

import os
from logging.config import fileConfig

import psycopg
import sqlalchemy as sa
from alembic import context

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = None

# Any fixed 64-bit number works; this one spells "clipvdb" in ASCII.
MIGRATION_LOCK_ID = 0x636C6970766462


def _url() -> str:
    url = config.attributes.get("clipvdb_url") or os.environ.get("CLIPVDB_DATABASE_URL")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: set CLIPVDB_DATABASE_URL or sqlalchemy.url")
    return url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: sa.Connection) -> None:
    connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_ID})
    connection.commit()
    try:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_ID})
        connection.commit()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    url = _url()
    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
