"""ANN indexes per stage: their records, DDL and sizes, and a searcher's set-up."""

from __future__ import annotations

from psycopg import sql

from ..stages import Stage
from .search import METRIC_OPS

SAVE_STAGE_INDEX = """INSERT INTO stage_indexes (stage, kind, params, built_rows, build_seconds, updated_at)
    VALUES (%s, %s, %s, %s, %s, now())
    ON CONFLICT (stage) DO UPDATE SET kind = EXCLUDED.kind, params = EXCLUDED.params,
      built_rows = EXCLUDED.built_rows, build_seconds = EXCLUDED.build_seconds, updated_at = EXCLUDED.updated_at"""
LOAD_STAGE_INDEX = "SELECT kind, params, build_seconds FROM stage_indexes WHERE stage = %s"
INDEX_SIZE = "SELECT to_regclass(%s) IS NOT NULL, pg_relation_size(to_regclass(%s))"


# A searcher's set-up in one statement: the space, the row counts, the recorded index, whether it exists.
SEARCHER_SETUP = """
WITH s AS (SELECT id FROM embedding_spaces WHERE model = %(model)s AND weights = %(weights)s AND stage = %(stage)s)
SELECT s.id, coalesce(c.n_rows, 0), coalesce(c.n_projected, 0), x.kind, x.params,
       to_regclass(%(full_index)s) IS NOT NULL, to_regclass(%(proj_index)s) IS NOT NULL,
       clipvdb_distributed()
FROM (SELECT 1) AS one
LEFT JOIN s ON true
LEFT JOIN stage_counts c
       ON c.stage = %(stage)s AND c.space_id = s.id AND c.dataset_id = %(dataset)s AND c.split = %(split)s
LEFT JOIN stage_indexes x ON x.stage = %(stage)s
"""


def index_name(stage: Stage, projected: bool = False) -> str:
    return f"{stage.projection_table}_ann" if projected else f"{stage.table}_ann"


def drop_index(name: str) -> sql.Composed:
    return sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name))


def opclass(column_type: str, metric: str) -> str:
    return f"{column_type}_{METRIC_OPS[metric]}"


def create_index(name: str, table: str, column: str, kind: str, opclass_name: str, params: dict) -> sql.Composed:
    """CREATE INDEX for ivfflat (params: lists) or hnsw (params: m, ef_construction)."""
    if kind == "ivfflat":
        with_ = sql.SQL("lists = {}").format(sql.Literal(int(params["lists"])))
    elif kind == "hnsw":
        with_ = sql.SQL("m = {}, ef_construction = {}").format(
            sql.Literal(int(params["m"])), sql.Literal(int(params["ef_construction"]))
        )
    else:
        raise ValueError(kind)
    return sql.SQL("CREATE INDEX {name} ON {table} USING {kind} ({column} {opclass}) WITH ({with_})").format(
        name=sql.Identifier(name),
        table=sql.Identifier(table),
        kind=sql.SQL(kind),
        column=sql.Identifier(column),
        opclass=sql.SQL(opclass_name),
        with_=with_,
    )


def set_configs(n: int) -> sql.Composed:
    """SELECT set_config(%s, %s, true), ... for n settings in one round trip (transaction-local)."""
    return sql.SQL("SELECT {}").format(sql.SQL(", ").join([sql.SQL("set_config(%s, %s, true)")] * n))
