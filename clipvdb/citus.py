"""The Citus jobs on a session: turn the home into a local cluster and distribute what it holds,
add, drain and remove workers, rebalance, read where everything is. The node processes themselves
are nodes.py; the placement of the tables is migration 0008's `clipvdb_distribute()`."""

from __future__ import annotations

from collections.abc import Callable

from . import catalog, db, indexes, nodes
from .errors import UsageError
from .nodes import NodesStatus, Rebalance
from .session import Session
from .stages import STAGE_NAMES


def require_embedded(session: Session, command: str) -> None:
    if not session.embedded:
        raise UsageError(
            f"{command} manages the embedded server; a database given by CLIPVDB_DATABASE_URL is managed where it runs"
        )


def start(session: Session, workers: int = nodes.DEFAULT_WORKERS) -> NodesStatus:
    """Make the session's home a local Citus cluster (the embedded server as coordinator plus
    `workers` workers), bring the schema to head and distribute it. Not for a database given by URL:
    point that at a Citus coordinator."""
    if not session.embedded:
        raise UsageError(
            "db nodes manages the embedded server's cluster; an external Citus coordinator is used as "
            "CLIPVDB_DATABASE_URL as it is (the migrations distribute the tables there)"
        )
    session.close()
    nodes.start(session.home_dir, workers)
    session.reconnect()
    session.prepare()
    with session.connection() as conn:
        placed = db.distribute(conn)
        conn.commit()
        for name in STAGE_NAMES:
            db.recount(conn, name)
        conn.commit()
        if "placed" in placed:
            # rows that were already stored moved to the workers; their indexes are rebuilt per
            # shard (ivfflat lists follow the rows per shard)
            for space, dataset in catalog.stored_space_datasets(conn):
                current = indexes.info(conn, space, dataset)
                if current.rows and current.exists:
                    indexes.refresh(conn, space, dataset)
    session.forget()
    return status(session)


def status(session: Session) -> NodesStatus:
    """Nodes, tables (reference or distributed, shards) and shards, bytes and rows per node."""
    with session.connection() as conn:
        return nodes.status(conn)


def add(session: Session, host: str | None = None, port: int = nodes.PORT) -> NodesStatus:
    """Add a worker (a new local one, or an external one at `host`); its share of the shards comes
    with `rebalance`."""
    require_embedded(session, "db nodes add")
    nodes.add(session.home_dir, host, port)
    session.forget()
    return status(session)


def rebalance(session: Session, progress: Callable[[int, int], None] | None = None) -> Rebalance:
    """Move shards until every worker holds its share, waiting to the end (queries go on; a moving
    shard's writes wait)."""
    with session.connection() as conn:
        conn.autocommit = True
        try:
            return nodes.rebalance(conn, progress)
        finally:
            conn.autocommit = False


def remove(session: Session, host: str | None = None, port: int = nodes.PORT) -> NodesStatus:
    """Drain a worker (its shards move to the others) and remove it: the last local worker, or the
    external one at `host`."""
    require_embedded(session, "db nodes remove")
    nodes.remove(session.home_dir, host, port)
    session.forget()
    return status(session)
