"""ANN indexes per embedding space: their records, DDL and sizes, and a searcher's set-up."""

from __future__ import annotations

from psycopg import sql

from ..stages import Stage
from .search import METRIC_OPS, of_width

# one record per (space, dataset): an index covers one space's rows of one dataset
SAVE_SPACE_INDEX = """INSERT INTO space_indexes
    (space_id, dataset_id, kind, params, built_rows, build_seconds, updated_at) VALUES (%s, %s, %s, %s, %s, %s, now())
    ON CONFLICT (space_id, dataset_id) DO UPDATE SET kind = EXCLUDED.kind, params = EXCLUDED.params,
      built_rows = EXCLUDED.built_rows, build_seconds = EXCLUDED.build_seconds, updated_at = EXCLUDED.updated_at"""
LOAD_SPACE_INDEX = (
    "SELECT kind, params, build_seconds, built_rows FROM space_indexes WHERE space_id = %s AND dataset_id = %s"
)
DELETE_SPACE_INDEXES_OF_DATASET = "DELETE FROM space_indexes WHERE dataset_id = %s"
INDEX_SIZE = "SELECT to_regclass(%s) IS NOT NULL, pg_relation_size(to_regclass(%s))"
# the ANN indexes (by name) of one dataset (%s: the name's end, _<dataset id>) on any table
INDEXES_OF_DATASET = """SELECT indexname FROM pg_indexes
    WHERE schemaname = current_schema() AND indexname ~ ('_ann_[0-9]+_' || %s || '$')"""


# A searcher's set-up in one statement: the space, the row counts, the recorded index of the
# space's rows of the dataset, whether it exists (`index_name`: the table's name, _ann_, the
# space's id, _ and the dataset's).
SEARCHER_SETUP = """
WITH s AS (SELECT id FROM embedding_spaces WHERE model = %(model)s AND weights = %(weights)s AND stage = %(stage)s)
SELECT s.id, coalesce(c.n_rows, 0), coalesce(c.n_projected, 0), x.kind, x.params,
       to_regclass(%(full_index)s || s.id || '_' || %(dataset)s) IS NOT NULL,
       to_regclass(%(proj_index)s || s.id || '_' || %(dataset)s) IS NOT NULL,
       clipvdb_distributed()
FROM (SELECT 1) AS one
LEFT JOIN s ON true
LEFT JOIN stage_counts c
       ON c.stage = %(stage)s AND c.space_id = s.id AND c.dataset_id = %(dataset)s AND c.split = %(split)s
LEFT JOIN space_indexes x ON x.space_id = s.id AND x.dataset_id = %(dataset)s
"""


def index_name(stage: Stage, space: int | str, dataset: int | str, projected: bool = False) -> str:
    """The ANN index of a space's rows of one dataset: on the stage table, or on its projections.
    ("", "") gives the prefix SEARCHER_SETUP completes."""
    table = stage.projection_table if projected else stage.table
    return f"{table}_ann_{space}_{dataset}" if space != "" else f"{table}_ann_"


def drop_index(name: str) -> sql.Composed:
    return sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name))


def opclass(column_type: str, metric: str) -> str:
    return f"{column_type}_{METRIC_OPS[metric]}"


def create_index(
    name: str,
    table: str,
    column: str,
    kind: str,
    opclass_name: str,
    params: dict,
    rows: tuple[int, int | None, str] | None = None,
    width: int | None = None,
) -> sql.Composed:
    """CREATE INDEX for ivfflat (params: lists) or hnsw (params: m, ef_construction). With `rows`
    (a space's id, a dataset's id, and the space's vectors' type with width: `halfvec(80)`), a
    partial index over that space's rows of that dataset (dataset None: of every dataset), in a
    table whose column holds vectors of several widths, on the column cast to the space's width
    (pgvector's way to index one width of an untyped column): a search of the space in the dataset
    orders by the same cast and filters by the same ids, and so reads this index alone, never
    another model's rows or another dataset's. With `width`, on a table of mapped vectors
    (projections, learned images), rows of that width only (`of_width`): a refit rewrites a space's
    rows at a new width in the transaction that builds the index, and the build sees the rows it
    replaced (their cast to the new width would fail)."""
    if kind == "ivfflat":
        with_ = sql.SQL("lists = {}").format(sql.Literal(int(params["lists"])))
    elif kind == "hnsw":
        with_ = sql.SQL("m = {}, ef_construction = {}").format(
            sql.Literal(int(params["m"])), sql.Literal(int(params["ef_construction"]))
        )
    else:
        raise ValueError(kind)
    target: sql.Composable = sql.Identifier(column)
    where: sql.Composable = sql.SQL("")
    if rows is not None:
        target = sql.SQL("({}::{})").format(target, sql.SQL(rows[2]))
        where = sql.SQL(" WHERE space_id = {}").format(sql.Literal(int(rows[0])))
        if rows[1] is not None:
            where = sql.SQL("{} AND dataset_id = {}").format(where, sql.Literal(int(rows[1])))
        if width is not None:
            where = sql.SQL("{} AND {}").format(where, of_width(sql.Identifier(column), width))
    return sql.SQL("CREATE INDEX {name} ON {table} USING {kind} ({target} {opclass}) WITH ({with_}){where}").format(
        name=sql.Identifier(name),
        table=sql.Identifier(table),
        kind=sql.SQL(kind),
        target=target,
        opclass=sql.SQL(opclass_name),
        with_=with_,
        where=where,
    )


def set_configs(n: int) -> sql.Composed:
    """SELECT set_config(%s, %s, true), ... for n settings in one round trip (transaction-local)."""
    return sql.SQL("SELECT {}").format(sql.SQL(", ").join([sql.SQL("set_config(%s, %s, true)")] * n))
