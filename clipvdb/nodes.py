"""A local Citus cluster under CLIPVDB_HOME: the home's embedded server as coordinator plus N
worker servers, all the embedded PostgreSQL with Citus preloaded, on unix sockets only.

`nodes.json` in the home marks the cluster (embedded.configured); from then on `embedded.start`
starts the workers with the coordinator. Placement of the tables
(what is distributed, what is a reference table) is the SQL function `clipvdb_distribute()` of
migration 0008, which runs wherever Citus is found, external coordinators included.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg

from . import db, embedded, queries
from .db import first_line
from .embedded import MISSING_CITUS, NODES_FILE, citus_installed, configured, ensure_workers, worker_dirs
from .errors import DatabaseError, ExtensionError, UsageError
from .records import Record


@dataclass
class Node(Record):
    node: str
    port: int
    role: str  # coordinator or worker
    active: bool


@dataclass
class PlacedTable(Record):
    """A table as Citus places it: distributed (by a column, in shards), reference, or local."""

    table: str
    type: str
    distribution_column: str | None
    shards: int


@dataclass
class NodesStatus(Record):
    """The nodes, every table's placement, and per node and table its shards, bytes and rows
    (`error`: why rows and sizes are incomplete, as when a worker is down)."""

    nodes: list[Node]
    tables: list[PlacedTable]
    per_node: dict[str, dict[str, dict]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Rebalance(Record):
    """A finished rebalance: Citus's job id (None when nothing had to move), moves, seconds."""

    job: int | None
    moves: int
    seconds: float


DEFAULT_WORKERS = 2
DEFAULT_SHARDS_PER_WORKER = 2
PORT = 5432  # every node listens on its own socket directory, so they share the number


def _socket_dir(url: str) -> str:
    return parse_qs(urlsplit(url).query)["host"][0]


def start(home: Path, workers: int = DEFAULT_WORKERS, shards_per_worker: int = DEFAULT_SHARDS_PER_WORKER) -> str:
    """Start (creating on first use) a coordinator and `workers` workers; return the coordinator's
    URL. The caller brings the schema to head and distributes it (Store.start_nodes)."""
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    home = home.expanduser().resolve()
    if not citus_installed(embedded.data_dir(home)):
        raise ExtensionError(MISSING_CITUS)
    cluster = configured(home)
    if cluster is not None and int(cluster["workers"]) != workers:
        raise UsageError(
            f"{home} already has a cluster of {cluster['workers']} workers; "
            f"run 'clipvdb db nodes start --workers {cluster['workers']}'"
        )
    if cluster is None:
        home.mkdir(parents=True, exist_ok=True)
        cluster = {"workers": workers, "shards": workers * shards_per_worker}
        (home / NODES_FILE).write_text(json.dumps(cluster) + "\n")
    url = embedded.start(home)
    worker_urls = ensure_workers(home, cluster)
    for node_url in [url, *worker_urls]:
        _prepare_node(node_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {embedded.DATABASE_NAME} SET citus.shard_count = {int(cluster['shards'])}")
        known = {r[0] for r in conn.execute("SELECT nodename FROM pg_dist_node").fetchall()}
        coordinator = _socket_dir(url)
        if coordinator not in known:
            conn.execute("SELECT citus_set_coordinator_host(%s, %s)", (coordinator, PORT))
        for wurl in worker_urls:
            if _socket_dir(wurl) not in known:
                conn.execute("SELECT citus_add_node(%s, %s)", (_socket_dir(wurl), PORT))
    return url


def _prepare_node(url: str) -> None:
    """Citus in a node's database, and the node's own name for the connections it makes to itself
    (some plans read intermediate results back): its socket folder, as no node listens on TCP."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
        if conn.execute("SHOW citus.local_hostname").fetchone() != (_socket_dir(url),):
            conn.execute(queries.set_system("citus.local_hostname", _socket_dir(url)))
            conn.execute("SELECT pg_reload_conf()")


def _require_cluster(home: Path) -> dict:
    cluster = configured(home)
    if cluster is None:
        raise UsageError(f"{home} has no cluster; start one with 'clipvdb db nodes start'")
    return cluster


def add(home: Path, host: str | None = None, port: int = PORT) -> str:
    """Add a worker: a new local one under the home (started and prepared here), or an external
    one at `host`:`port` that already runs PostgreSQL with Citus and pgvector. Its shards come with
    `rebalance`. Returns the node's name."""
    home = home.expanduser().resolve()
    cluster = _require_cluster(home)
    url = embedded.start(home)
    if host is None:
        cluster = {**cluster, "workers": int(cluster["workers"]) + 1}
        new = ensure_workers(home, cluster)[-1]
        _prepare_node(new)
        (home / NODES_FILE).write_text(json.dumps(cluster) + "\n")
        host, port = _socket_dir(new), PORT
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(queries.ADD_NODE, (host, port))
        except psycopg.Error as exc:
            raise DatabaseError(f"Citus could not add the node {host}:{port}: {first_line(exc)}") from exc
    return host


def rebalance(
    conn: psycopg.Connection, progress: Callable[[int, int], None] | None = None, *, poll: float = 0.5
) -> Rebalance:
    """Move shards until every worker holds its share (Citus's background rebalancer), waiting to
    the end; writes to a shard wait while it moves, reads go on. `progress(done, total)` after each
    poll."""
    start = time.perf_counter()
    job = db.scalar(conn, queries.REBALANCE_START)
    if job is None:  # nothing to move
        return Rebalance(None, 0, 0.0)
    while True:
        row = conn.execute(queries.REBALANCE_STATUS, (job,)).fetchone()
        if row is None:
            raise DatabaseError(f"Citus has no status for its rebalance job {job}; see citus_rebalance_status()")
        state, details = row
        counts = (details or {}).get("task_state_counts", {})
        total = sum(counts.values())
        if progress:
            progress(counts.get("done", 0), total)
        if state in ("finished", "failed", "cancelled"):
            break
        time.sleep(poll)
    if state != "finished":
        raise DatabaseError(f"the rebalance (Citus job {job}) ended {state}; see citus_rebalance_status()")
    return Rebalance(job, total, round(time.perf_counter() - start, 3))


def remove(home: Path, host: str | None = None, port: int = PORT) -> str | None:
    """Drain a worker (its shards move to the others, nothing is lost) and remove it: the last local
    worker, or the external one at `host`:`port`. Returns the node's name."""
    home = home.expanduser().resolve()
    cluster = _require_cluster(home)
    url = embedded.start(home)
    local = host is None
    if local:
        if int(cluster["workers"]) <= 1:
            raise UsageError("a cluster keeps at least one worker; 'clipvdb db nodes stop' stops them all")
        pgdata = worker_dirs(home, cluster)[-1]
        host, port = _socket_dir(embedded.start_server(pgdata, preload="citus")), PORT
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(queries.DRAIN_NODE, (host, port))
            conn.execute(queries.REMOVE_NODE, (host, port))
        except psycopg.Error as exc:
            raise DatabaseError(f"Citus could not drain and remove the node {host}:{port}: {first_line(exc)}") from exc
    if local:
        embedded.stop_server(pgdata)
        shutil.rmtree(pgdata.parent)
        (home / NODES_FILE).write_text(json.dumps({**cluster, "workers": int(cluster["workers"]) - 1}) + "\n")
    return host


def stop(home: Path) -> list[str]:
    """Stop the coordinator and every worker; return the data directories stopped."""
    home = home.expanduser().resolve()
    cluster = configured(home)
    if cluster is None:
        raise UsageError(f"{home} has no cluster; start one with 'clipvdb db nodes start'")
    stopped = []
    for pgdata in [embedded.data_dir(home), *worker_dirs(home, cluster)]:
        if embedded.running(pgdata):
            embedded.stop_server(pgdata)
            stopped.append(str(pgdata))
    return stopped


def status(conn: psycopg.Connection) -> NodesStatus:
    """Nodes, shards per table and rows per node, read on the coordinator."""
    has_citus = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone()
    if not has_citus:
        raise UsageError("this database has no Citus; start a cluster with 'clipvdb db nodes start'")
    nodes = [
        Node(r[0], r[1], "coordinator" if r[2] == 0 else "worker", r[3])
        for r in conn.execute(
            "SELECT nodename, nodeport, groupid, isactive FROM pg_dist_node ORDER BY groupid"
        ).fetchall()
    ]
    # from the coordinator's metadata alone (citus_tables would ask every worker for sizes)
    tables = [
        PlacedTable(r[0], r[1], r[2], r[3])
        for r in conn.execute(
            """SELECT p.logicalrelid::regclass::text,
                      CASE WHEN p.partmethod = 'h' THEN 'distributed'
                           WHEN p.repmodel = 't' THEN 'reference' ELSE 'local' END AS kind,
                      CASE WHEN p.partkey IS NULL THEN NULL
                           ELSE column_to_column_name(p.logicalrelid, p.partkey) END,
                      (SELECT count(*) FROM pg_dist_shard s WHERE s.logicalrelid = p.logicalrelid)
               FROM pg_dist_partition p ORDER BY 2, 1"""
        ).fetchall()
    ]
    per_node: dict[str, dict] = {}
    try:
        with conn.transaction():  # sizes and counts ask every worker; one may be down
            for node, table, shards, size in conn.execute(
                """SELECT nodename, table_name::text, count(*), sum(shard_size) FROM citus_shards
                   WHERE citus_table_type = 'distributed' GROUP BY 1, 2 ORDER BY 1, 2"""
            ).fetchall():
                per_node.setdefault(node, {})[table] = {"shards": shards, "size_bytes": int(size or 0)}
            counted = [t.table for t in tables if t.table == "images" or t.table.startswith("embeddings_")]
            unanswered = 0
            for name in counted:
                for node, table, n, failed in conn.execute(
                    """SELECT s.nodename, s.table_name::text,
                              sum(CASE WHEN r.success THEN (r.result)::bigint END),
                              count(*) FILTER (WHERE NOT r.success)
                       FROM run_command_on_shards(%s, 'SELECT count(*) FROM %%s') r
                       JOIN citus_shards s ON s.shardid = r.shardid GROUP BY 1, 2""",
                    (name,),
                ).fetchall():
                    unanswered += failed
                    if n is not None and not failed:
                        per_node.setdefault(node, {}).setdefault(table, {})["rows"] = int(n)
            if unanswered:
                return NodesStatus(
                    nodes, tables, per_node, f"{unanswered} shards did not answer: is every worker running?"
                )
    except psycopg.Error as exc:
        return NodesStatus(nodes, tables, per_node, str(exc).splitlines()[0])
    return NodesStatus(nodes, tables, per_node)
