"""A Citus cluster's nodes, and table sizes."""

from __future__ import annotations

from psycopg import sql

ADD_NODE = "SELECT citus_add_node(%s, %s)"
# block_writes: a shard's writes wait while it moves and reads go on; the logical-replication mode
# would need wal_level = logical on every node
REBALANCE_START = "SELECT citus_rebalance_start(shard_transfer_mode := 'block_writes')"
REBALANCE_STATUS = "SELECT state, details FROM citus_rebalance_status() WHERE job_id = %s"
DRAIN_NODE = "SELECT citus_drain_node(%s, %s, shard_transfer_mode := 'block_writes')"
REMOVE_NODE = "SELECT citus_remove_node(%s, %s)"


def set_system(name: str, value: str) -> sql.Composed:
    """ALTER SYSTEM SET of one setting (takes effect on reload)."""
    return sql.SQL("ALTER SYSTEM SET {} = {}").format(
        sql.SQL(".").join(sql.Identifier(p) for p in name.split(".")), sql.Literal(value)
    )


# a table's bytes with its TOAST table and indexes (a vector stored out of line lives in TOAST)
TOTAL_RELATION_SIZE = "SELECT pg_total_relation_size(%s)"
