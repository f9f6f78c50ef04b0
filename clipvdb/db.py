"""Database access: which server, connections with pgvector registered, migrations, status."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector, Vector
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.adapt import Loader
from psycopg.pq import Format

from . import config, embedded, queries
from .errors import DatabaseError, DiskFullError, ExtensionError, SchemaError
from .stages import STAGES

MIN_PGVECTOR = (0, 7, 0)


def first_line(exc: BaseException) -> str:
    """A driver error as one line: its first line of text, or its class name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def resolve_url(database_url: str | None = None, home: Path | None = None) -> str:
    """The URL given, else CLIPVDB_DATABASE_URL, else the embedded server (started if needed)."""
    url = database_url or config.database_url()
    if url:
        return url
    return embedded.start(home)


def scalar(conn: psycopg.Connection, query: Any, params: Any = None) -> Any:
    """The first column of the first row of a statement that always returns a row."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise DatabaseError(f"expected a row from: {str(query)[:80]}")
    return row[0]


def distributed(conn: psycopg.Connection) -> bool:
    """Whether clipvdb's tables are distributed by Citus (migration 0008's clipvdb_distribute)."""
    return bool(scalar(conn, "SELECT clipvdb_distributed()"))


def distribute(conn: psycopg.Connection) -> str:
    """Distribute clipvdb's tables over the Citus workers (migration 0008's SQL function); says what it did."""
    return str(scalar(conn, "SELECT clipvdb_distribute()"))


def shard_count(conn: psycopg.Connection, table: str) -> int:
    """Shards of a table distributed by Citus; 1 for any other table."""
    if not distributed(conn):
        return 1
    row = conn.execute("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = to_regclass(%s)", (table,)).fetchone()
    return max(1, int(row[0])) if row else 1


def set_local(conn: psycopg.Connection, settings: list[tuple[str, str]], *, distributed: bool = False) -> None:
    """SET LOCAL each (name, value) for the open transaction; with `distributed`, Citus is first
    asked to forward them to the shards' connections (it forwards SET LOCAL, never set_config())."""
    if distributed:
        conn.execute(queries.set_local("citus.propagate_set_commands", "local"))
    for name, value in settings:
        conn.execute(queries.set_local(name, value))


def one_connection_per_node(conn: psycopg.Connection) -> None:
    """On Citus, for the open transaction: writes to a reference table and to distributed tables
    with foreign keys to it must share one connection per node (Citus refuses them otherwise)."""
    if distributed(conn):
        conn.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")


def unique_violation(exc: BaseException) -> bool:
    """A duplicate key: SQLSTATE 23505, or as Citus relays it from a shard (XX000, same message)."""
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return True
    return isinstance(exc, psycopg.errors.InternalError) and "duplicate key value violates unique constraint" in str(
        exc
    )


def node_failure(exc: BaseException) -> bool:
    """Whether a server error is Citus reporting a worker it could not reach."""
    text = str(exc)
    return "remote node" in text or "connection to the remote" in text or "could not connect to" in text


def recount(conn: psycopg.Connection, stage_name: str) -> None:
    """On Citus, recompute a stage's row counts after a write (plain PostgreSQL keeps them by
    triggers, which Citus cannot run on shards)."""
    if distributed(conn):
        conn.execute("SELECT clipvdb_recount(%s)", (stage_name,))


def disk_full_error(exc: BaseException, again: str = "run the same command again") -> DiskFullError:
    """SQLSTATE 53100 (a table or index could not grow) as one line naming the disk."""
    return DiskFullError(f"the database's disk is full ({first_line(exc)}); free space, then {again}")


# New connections retry while the server has no free slot (embedded.open_connection).
BUSY_WAIT_S = embedded.BUSY_WAIT_S
too_many_clients = embedded.too_many_clients
open_connection = embedded.open_connection


def connection_error(exc: BaseException) -> DatabaseError:
    if too_many_clients(exc):
        return DatabaseError(
            f"the database server has no free connection slot after {BUSY_WAIT_S:.0f} s ({first_line(exc)}); "
            "run fewer clipvdb processes at once, or raise the server's max_connections"
        )
    return DatabaseError(f"cannot connect to the database: {first_line(exc)}")


def connect(url: str, *, autocommit: bool = False, vector: bool = True) -> psycopg.Connection:
    """Open a connection; with `vector`, check pgvector and register its types (pgvector-python)."""
    try:
        conn = open_connection(url, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise connection_error(exc) from exc
    if vector:
        try:
            check_pgvector(conn)
            register_vector(conn)
        except BaseException:
            conn.close()
            raise
    return conn


def as_array(value) -> np.ndarray:
    """A stored embedding (numpy array, Vector or HalfVector, by type and format) as float32 numpy."""
    if isinstance(value, HalfVector | Vector):
        value = value.to_numpy()
    return np.asarray(value, dtype=np.float32)


class _HalfvecLoader(Loader):
    format = Format.BINARY

    def load(self, data) -> np.ndarray:
        return np.frombuffer(bytes(data), dtype=">f2", offset=4).astype(np.float32)


class _VectorLoader(Loader):
    format = Format.BINARY

    def load(self, data) -> np.ndarray:
        return np.frombuffer(bytes(data), dtype=">f4", offset=4).astype(np.float32)


def numpy_vectors(cur: psycopg.Cursor) -> psycopg.Cursor:
    """Load vector and halfvec columns of a binary cursor straight into float32 numpy arrays:
    one frombuffer per row, about 15x cheaper than building pgvector objects for wide rows."""
    for name, loader in (("vector", _VectorLoader), ("halfvec", _HalfvecLoader)):
        info = cur.adapters.types.get(name)
        if info is not None:
            cur.adapters.register_loader(info.oid, loader)
    return cur


def as_param(value: np.ndarray, column_type: str):
    """A vector as a parameter of `column_type` ('vector' or 'halfvec'): COPY rows and kNN queries."""
    return HalfVector(value) if column_type == "halfvec" else value


@contextlib.contextmanager
def connection(url: str, **kwargs) -> Iterator[psycopg.Connection]:
    conn = connect(url, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


# pgvector releases whose fixes clipvdb's deletes, vacuums and batched searches rely on
PGVECTOR_FIXES = (
    ("0.8.3", "possible corruption of an hnsw index when it is vacuumed"),
    ("0.8.4", "'hnsw graph not repaired' errors, and inserts while an hnsw index is vacuumed"),
    ("0.8.6", "the memory of ivfflat scans under nested-loop joins (the batched search is one)"),
)
PGVECTOR_WANTED = PGVECTOR_FIXES[-1][0]  # the release with every fix above
# from this release on, `delete --vacuum` VACUUMs the tables a delete removed rows from at once
SAFE_HNSW_VACUUM = "0.8.4"
PGVECTOR_VERSION = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"


def pgvector_lacks(version: str | None) -> list[str]:
    """The fixes of PGVECTOR_FIXES that pgvector `version` lacks, each as 'release: what it fixed'."""
    if not version:
        return []
    have = version_tuple(version)
    return [f"{release}: {what}" for release, what in PGVECTOR_FIXES if have < version_tuple(release)]


def check_pgvector(conn: psycopg.Connection) -> str:
    """Return the installed pgvector version; raise ExtensionError if missing or older than 0.7."""
    row = conn.execute(PGVECTOR_VERSION).fetchone()
    if row is None:
        available = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        if available is None:
            raise ExtensionError(
                "pgvector is not installed on this PostgreSQL server; install pgvector >= 0.7 "
                "(https://github.com/pgvector/pgvector#installation) or unset CLIPVDB_DATABASE_URL "
                "to use the embedded server"
            )
        raise ExtensionError("the database has no schema yet; run 'clipvdb db upgrade'")
    if version_tuple(row[0]) < MIN_PGVECTOR:
        raise ExtensionError(
            f"pgvector {row[0]} is too old (halfvec needs >= 0.7); upgrade it, then run ALTER EXTENSION vector UPDATE"
        )
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
    return row[0]


def migrations_dir() -> Path:
    return Path(str(resources.files("clipvdb.migrations")))


def sql_dir() -> Path:
    return Path(str(resources.files("clipvdb.sql")))


def _alembic_config(url: str):
    from alembic.config import Config  # Alembic and SQLAlchemy: only when migrating

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["clipvdb_url"] = url
    return cfg


def _sa_engine(url: str):
    import sqlalchemy as sa  # only when migrating

    return sa.create_engine("postgresql+psycopg://", creator=lambda: open_connection(url))


def upgrade(url: str, revision: str = "head") -> str | None:
    """Run Alembic migrations up to `revision` (in-process); return the new revision."""
    from alembic import command  # only when migrating

    _alembic(command.upgrade, url, revision)
    return current_revision(url)


def downgrade(url: str, revision: str = "base") -> str | None:
    from alembic import command  # only when migrating

    _alembic(command.downgrade, url, revision)
    return current_revision(url)


def _alembic(fn, url: str, revision: str) -> None:
    cfg = _alembic_config(url)
    engine = _sa_engine(url)
    try:
        with engine.connect() as sa_conn:
            cfg.attributes["connection"] = sa_conn
            fn(cfg, revision)
    except psycopg.OperationalError as exc:
        raise connection_error(exc) from exc
    except Exception as exc:
        orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
        if isinstance(orig, psycopg.errors.DiskFull):
            raise disk_full_error(orig, f"run the migration to {revision} again") from exc
        if isinstance(orig, psycopg.OperationalError):
            raise DatabaseError(f"cannot connect to the database: {first_line(orig)}") from exc
        if isinstance(orig, psycopg.Error):
            raise DatabaseError(f"the migration to {revision} stopped: {first_line(orig)}") from exc
        raise
    finally:
        engine.dispose()


def known_revisions() -> list[str]:
    """Revision ids in order. Each migration file is named after its revision id ("0006_...py"), so
    no Alembic import is needed to know the head (tests check this against Alembic's own answer)."""
    return sorted(p.name.split("_", 1)[0] for p in (migrations_dir() / "versions").glob("[0-9]*_*.py"))


def head_revision() -> str:
    return known_revisions()[-1]


def is_known_revision(rev: str) -> bool:
    return rev in known_revisions()


def revision_of(conn: psycopg.Connection) -> str | None:
    """The schema's Alembic revision (None: no clipvdb schema). Alembic's MigrationContext reads it
    through SQLAlchemy, which a plain psycopg connection lacks; these two statements do the same."""
    row = None
    if scalar(conn, "SELECT to_regclass('public.alembic_version')") is not None:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE and not conn.autocommit:
        conn.rollback()
    return row[0] if row else None


def current_revision(url: str) -> str | None:
    with connection(url, vector=False) as conn:
        return revision_of(conn)


def schema_behind(rev: str | None) -> SchemaError:
    return SchemaError(
        f"the database schema is at revision {rev or 'none'}, clipvdb needs {head_revision()}; run 'clipvdb db upgrade'"
    )


def status(url: str) -> dict:
    """Server and pgvector versions, schema revision, rows per stage."""
    with connection(url, vector=False) as conn:
        server = scalar(conn, "SHOW server_version")
        row = conn.execute(PGVECTOR_VERSION).fetchone()
        pgvector = row[0] if row else None
        revision = revision_of(conn)
        rows: dict[str, int] = {}
        if revision is not None and scalar(conn, "SELECT to_regclass('public.stage_counts')"):
            for stage in STAGES.values():
                rows[stage.name] = scalar(conn, queries.total_rows(stage))
        images = 0
        if revision is not None and scalar(conn, "SELECT to_regclass('public.images')"):
            images = scalar(conn, "SELECT count(*) FROM images")
        workers = None
        if scalar(conn, "SELECT to_regproc('clipvdb_distributed') IS NOT NULL") and distributed(conn):
            workers = scalar(conn, "SELECT count(*) FROM pg_dist_node WHERE groupid <> 0 AND noderole = 'primary'")
    return {
        "citus_workers": workers,
        "server_version": server,
        "pgvector_version": pgvector,
        "pgvector_lacks": pgvector_lacks(pgvector),
        "pgvector_wanted": PGVECTOR_WANTED,
        "revision": revision,
        "head_revision": head_revision(),
        "images": images,
        "rows_per_stage": rows,
    }


def grant_reader(url: str, role: str, password: str | None = None) -> None:
    """Create (or update) a role that can SELECT every table and view and change nothing."""
    if not role or len(role) > 63:
        raise SchemaError("a role name needs 1 to 63 characters")
    ident = sql.Identifier(role)
    with connection(url, vector=False, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(ident))
        if password is not None:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(password)))
        dbname = conn.info.dbname
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(ident))
        conn.execute(sql.SQL("REVOKE CREATE, TEMPORARY ON DATABASE {} FROM {}").format(sql.Identifier(dbname), ident))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname), ident))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(ident))
        conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {}").format(ident))


def copy_rows(conn: psycopg.Connection, statement: Any, types: list[str], rows: Any) -> None:
    """Rows through one binary COPY statement (queries.copy_*), with pgvector's types set."""
    with conn.cursor() as cur:
        with cur.copy(statement) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
