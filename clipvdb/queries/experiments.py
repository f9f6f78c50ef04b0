"""Search experiments over scratch copies of a stage."""

from __future__ import annotations

from psycopg import sql

from ..stages import Stage
from .search import vector_type

SPACE_ROWS = "SELECT coalesce(sum(n_rows), 0) FROM stage_counts WHERE stage = %s AND space_id = %s"
INSERT_EXPERIMENT = "INSERT INTO experiments (stage, model, weights, metric) VALUES (%s, %s, %s, %s) RETURNING id"
INSERT_EXPERIMENT_RESULT = """INSERT INTO experiment_results
    (experiment_id, size, method, params, queries, recall_at_1, recall_at_10, mean_ms, p95_ms, build_s, index_bytes)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"""
RELATION_SIZE = "SELECT pg_relation_size(to_regclass(%s))"


RESET_ALL = "RESET ALL"


def set_session(name: str, value: str) -> sql.Composed:
    """SET of one setting for the rest of the session."""
    return sql.SQL("SET {} = {}").format(
        sql.SQL(".").join(sql.Identifier(p) for p in name.split(".")), sql.Literal(value)
    )


def scratch_copy(table: str, stage: Stage) -> sql.Composed:
    """A space's first rows (%s, %s: space, rows) as a table typed by the space's width."""
    return sql.SQL(
        "CREATE TEMP TABLE {} AS SELECT image_id, embedding::{} AS embedding FROM {} WHERE space_id = %s "
        "ORDER BY image_id LIMIT %s"
    ).format(sql.Identifier(table), vector_type(stage), sql.Identifier(stage.table))


def drop_table(table: str) -> sql.Composed:
    return sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table))


def latest_embeddings(stage: Stage) -> sql.Composed:
    return sql.SQL("SELECT embedding FROM {} WHERE space_id = %s ORDER BY image_id DESC LIMIT %s").format(
        sql.Identifier(stage.table)
    )
