"""kNN search: distances, the batched statement on one node and on a Citus shard, the candidates of
a projected index."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from psycopg import sql

from .. import config
from ..stages import Stage

Metric = Literal["l2", "cosine", "ip"]
# A projected index's vectors are half precision: half the pages to scan per probe (stage first,
# 64-d, 25 of 500 lists: 7.8 s for the 10,000 CIFAR-10 queries on one connection against 9.6-10.5
# s as vector, recall@1 0.982 against 0.981).
PROJECTION_TYPE = "halfvec"

# metric -> (operator, exact function form that no index can serve)
METRICS: dict[str, tuple[str, str]] = {
    "l2": ("<->", "l2_distance"),
    "cosine": ("<=>", "cosine_distance"),
    "ip": ("<#>", "inner_product"),
}
METRIC_OPS = {"l2": "l2_ops", "cosine": "cosine_ops", "ip": "ip_ops"}
INDEX_KINDS: tuple[str, ...] = ("ivfflat", "hnsw", "none")


def vector_type(stage: Stage) -> sql.Composable:
    """The stage's column type with its width: vector(1024), halfvec(3072)."""
    return sql.SQL("{}({})").format(sql.SQL(stage.column_type), sql.Literal(stage.dim))


def of_width(column: sql.Composable, width: int) -> sql.Composed:
    """`vector_dims(column) = width`: the condition of a mapped table's partial index, which a
    search repeats so that the planner knows the index holds its rows."""
    return sql.SQL("vector_dims({}) = {}").format(column, sql.Literal(int(width)))


def distance(stage: Stage, metric: str, column: sql.Composable, query: sql.Composable, *, exact: bool) -> sql.Composed:
    """`column::type <op> query::type`, the column cast to the space's width as its partial index is
    (a stage table's column holds vectors of every width: `create_index`), or with `exact` the
    function form, which matches no index operator and so is always an exact scan
    (enable_indexscan=off only penalises index paths)."""
    op, fn = METRICS[metric]
    q = sql.SQL("({})::{}").format(query, vector_type(stage))
    if not exact:
        return sql.SQL("({})::{} {} {}").format(column, vector_type(stage), sql.SQL(op), q)
    if metric == "ip":
        return sql.SQL("(-{}({}, {}))").format(sql.SQL(fn), column, q)
    return sql.SQL("{}({}, {})").format(sql.SQL(fn), column, q)


def candidate_rows(
    table: sql.Composable,
    projected_dim: int,
    query: sql.Composable,
    where: sql.Composable,
    n: sql.Composable,
    rows_per_vector: int = config.CANDIDATE_ROWS_PER_VECTOR,
) -> sql.Composed:
    """A projected index's candidates for one query: (space_id, image_id) of every row among the `n`
    nearest distinct projected vectors. Identical rows (an image stored twice) share a projection
    and count once, so copies never squeeze a nearer vector out of the exact re-rank, and all of a
    vector's rows come together. A row's rank is the dense rank of its projected distance in index
    order; the scan stops at the first row past rank `n` (PostgreSQL's run condition). It reads at
    most `rows_per_vector` x `n` rows: a LIMIT, which lets the planner choose the index (where that
    LIMIT nears the table's rows, as on a table of a few thousand, it sorts the table instead)."""
    typed = sql.SQL("{}({})").format(sql.SQL(PROJECTION_TYPE), sql.Literal(projected_dim))
    order = sql.SQL("(c.proj)::{} <-> ({})::{}").format(typed, query, typed)
    return sql.SQL(
        """SELECT c.space_id, c.image_id
        FROM (
            SELECT c.space_id, c.image_id, dense_rank() OVER (ORDER BY c.pd) AS vector_rank
            FROM (
                SELECT c.space_id, c.image_id, {order} AS pd FROM {proj} c
                WHERE {where} AND {width}
                ORDER BY {order}
                LIMIT {n} * {rows}
            ) c
        ) c
        WHERE c.vector_rank <= {n}"""
    ).format(
        order=order,
        proj=table,
        where=where,
        width=of_width(sql.SQL("c.proj"), projected_dim),
        n=n,
        rows=sql.Literal(int(rows_per_vector)),
    )


def shard_rows_per_vector(shards: int) -> int:
    """`candidate_rows`' rows per vector on one of `shards` shards: a shard holds about 1/shards of
    a vector's copies (each copy is an image of its own, placed by its id), so its share of the
    candidates needs that share of the rows, at least 4 (the copies do not split evenly)."""
    return max(4, math.ceil(config.CANDIDATE_ROWS_PER_VECTOR / max(shards, 1)))


def _top(select: sql.Composable, order: sql.Composable, k: sql.Composable, *, exact: bool) -> sql.Composed:
    """The k nearest of `select` (which names image_id and distance, ordered by `order`), ties at
    equal distance broken by image id: the same k on one node and over shards. An exact scan sorts
    by both; an index can order by its distance alone, so the rows tied with the k-th come too
    (WITH TIES) and are ordered by id above it."""
    if exact:
        return sql.SQL("{} ORDER BY distance, image_id LIMIT {}").format(select, k)
    return sql.SQL(
        "SELECT t.image_id, t.distance FROM ({} ORDER BY {} FETCH FIRST ({}) ROWS WITH TIES) t "
        "ORDER BY t.distance, t.image_id LIMIT {}"
    ).format(select, order, k, k)


@dataclass(frozen=True)
class _Place:
    """Where a kNN statement runs, as the names it writes: one node (psycopg's named parameters and
    the tables themselves) or one shard (clipvdb_knn_shard's format positions and $n parameters)."""

    table: sql.Composable  # the searched table (a stage's, or its learned space's)
    projections: sql.Composable  # the stage's projections table
    images: sql.Composable
    k: sql.Composable
    space: sql.Composable
    dataset: sql.Composable
    split: sql.Composable
    candidates: sql.Composable  # distinct projected vectors re-ranked (a projected index)
    rows_per_vector: int  # candidate rows read per distinct vector


def _on_node(stage: Stage, learned: bool) -> _Place:
    return _Place(
        table=sql.Identifier(stage.learned_table if learned else stage.table),
        projections=sql.Identifier(stage.projection_table),
        images=sql.Identifier("images"),
        k=sql.SQL("%(k)s"),
        space=sql.SQL("%(space)s"),
        dataset=sql.SQL("%(dataset)s"),
        split=sql.SQL("%(split)s"),
        candidates=sql.SQL("%(candidates)s"),
        rows_per_vector=config.CANDIDATE_ROWS_PER_VECTOR,
    )


def _on_shard(shards: int) -> _Place:
    return _Place(
        table=sql.SQL("%1$I"),
        projections=sql.SQL("%2$I"),
        images=sql.SQL("%3$I"),
        k=sql.SQL("$2"),
        space=sql.SQL("$3"),
        dataset=sql.SQL("$4"),
        split=sql.SQL("$5"),
        candidates=sql.SQL("$6"),
        rows_per_vector=shard_rows_per_vector(shards),
    )


def _nearest(
    stage: Stage,
    metric: str,
    at: _Place,
    query: sql.Composable,
    *,
    exact: bool,
    learned_dim: int | None = None,
    projected: sql.Composable | None = None,
    projected_dim: int | None = None,
) -> sql.Composed:
    """One query's k nearest rows (image_id, distance), ties at equal distance by image id: `query`
    against the table's vectors (a learned space's: `query` already mapped there, L2 only), or, with
    `projected_dim`, the rows of the nearest distinct projected vectors (`projected` the query's
    projection) re-ranked by the exact distance on the full embedding."""
    where = sql.SQL("x.space_id = {} AND x.dataset_id = {} AND x.split = {}").format(at.space, at.dataset, at.split)
    if learned_dim is not None:
        dist = sql.SQL("l2_distance(x.vec, {})" if exact else "(x.vec)::vector({}) <-> {}").format(
            *([query] if exact else [sql.Literal(learned_dim), query])
        )
        where = sql.SQL("{} AND {}").format(where, of_width(sql.SQL("x.vec"), learned_dim))
        select = sql.SQL("SELECT x.image_id, {} AS distance FROM {} x WHERE {}").format(dist, at.table, where)
        return _top(select, dist, at.k, exact=exact)
    if projected_dim is not None and projected is not None:
        # the exact distance as a subquery per candidate row: always an index lookup of that row
        # (a join could be planned as a hash join over the whole table when many rows are expected)
        return sql.SQL(
            """SELECT c.image_id,
                   (SELECT {dist} FROM {table} x WHERE x.space_id = c.space_id AND x.image_id = c.image_id)
                   AS distance
            FROM ({candidates}) c
            ORDER BY distance, c.image_id
            LIMIT {k}"""
        ).format(
            dist=distance(stage, metric, sql.SQL("x.embedding"), query, exact=False),
            table=at.table,
            candidates=candidate_rows(
                at.projections,
                projected_dim,
                projected,
                sql.SQL("c.space_id = {} AND c.dataset_id = {} AND c.split = {}").format(
                    at.space, at.dataset, at.split
                ),
                at.candidates,
                at.rows_per_vector,
            ),
            k=at.k,
        )
    # exact: the distance is the sort key itself, computed once per row (a select-list `<->` beside
    # an ORDER BY l2_distance() is computed for every row scanned too: twice the work)
    column = sql.SQL("x.embedding")
    select = sql.SQL("SELECT x.image_id, {} AS distance FROM {} x WHERE {}").format(
        distance(stage, metric, column, query, exact=exact), at.table, where
    )
    return _top(select, distance(stage, metric, column, query, exact=False), at.k, exact=exact)


def _similarity_of(
    stage: Stage, at: _Place, query: sql.Composable, *, learned: bool
) -> tuple[sql.Composable, sql.Composable]:
    """The cosine similarity of each neighbor to its query (the dino vote's), looked up by key for
    the k rows a query returns, never for every row scanned: (its expression, the join it needs).
    `query` as `_nearest` takes it (in a learned space, already cast to its width)."""
    if learned:
        expr = sql.SQL("1 - cosine_distance(s.vec, {})").format(query)
    else:
        expr = sql.SQL("1 - cosine_distance(s.embedding, ({})::{})").format(query, vector_type(stage))
    join = sql.SQL(" JOIN {} s ON s.space_id = {} AND s.image_id = n.image_id").format(at.table, at.space)
    return expr, join


def knn(
    stage: Stage,
    metric: str = "l2",
    *,
    exact: bool = False,
    projected_dim: int | None = None,
    learned_dim: int | None = None,
    similarity: bool = False,
) -> sql.Composed:
    """A batch of kNN queries as one statement on one node: %(vectors)b is a vector[] (one query
    each), answered by a LATERAL `ORDER BY embedding <op> q LIMIT %(k)s` over one space, dataset and
    split (`_nearest`). With `projected_dim`, %(projected)b holds the queries' projections: the rows
    of the %(candidates)s nearest distinct projected vectors (`candidate_rows`) are re-ranked by the
    exact distance on the full embedding. With `learned_dim`, %(projected)b holds the queries' images
    under the stage's learned map, searched in its learned table by L2. k neighbors are k rows (an
    image stored twice counts twice), ties at equal distance broken by image id. Rows: (query ordinal
    from 1, image_id, label, source, distance[, similarity]), nearest first per query."""
    at = _on_node(stage, learned_dim is not None)
    vtype = sql.SQL(stage.column_type)
    queries_in: sql.Composable
    query: sql.Composable
    if learned_dim is not None:
        queries_in = sql.SQL("unnest(%(projected)b::vector[]) WITH ORDINALITY AS q(p, ord)")
        query = sql.SQL("(q.p)::vector({})").format(sql.Literal(learned_dim))
        nearest = _nearest(stage, "l2", at, query, exact=exact, learned_dim=learned_dim)
    elif projected_dim is not None:
        queries_in = sql.SQL(
            "unnest(%(vectors)b::{}[], %(projected)b::vector[]) WITH ORDINALITY AS q(v, p, ord)"
        ).format(vtype)
        query = sql.SQL("q.v")
        nearest = _nearest(stage, metric, at, query, exact=False, projected=sql.SQL("q.p"), projected_dim=projected_dim)
    else:
        queries_in = sql.SQL("unnest(%(vectors)b::{}[]) WITH ORDINALITY AS q(v, ord)").format(vtype)
        query = sql.SQL("q.v")
        nearest = _nearest(stage, metric, at, query, exact=exact)
    sim: sql.Composable = sql.SQL("")
    sim_join: sql.Composable = sql.SQL("")
    if similarity:
        expr, sim_join = _similarity_of(stage, at, query, learned=learned_dim is not None)
        sim = sql.SQL(", {} AS similarity").format(expr)
    return sql.SQL(
        """SELECT q.ord, n.image_id, i.label, i.source, n.distance{sim}
        FROM {queries_in}
        CROSS JOIN LATERAL ({nearest}) n
        JOIN {images} i ON i.id = n.image_id{sim_join}
        ORDER BY q.ord, n.distance, n.image_id"""
    ).format(sim=sim, queries_in=queries_in, nearest=nearest, images=at.images, sim_join=sim_join)


def set_local(name: str, value: str) -> sql.Composed:
    """SET LOCAL of one setting (Citus forwards SET LOCAL to the shards' connections when
    citus.propagate_set_commands is 'local'; set_config() calls are never forwarded)."""
    return sql.SQL("SET LOCAL {} = {}").format(
        sql.SQL(".").join(sql.Identifier(p) for p in name.split(".")), sql.Literal(value)
    )


def knn_scratch(table: str, stage: Stage, metric: str, *, exact: bool) -> sql.Composed:
    """One query against a scratch copy (experiments): image ids nearest to %s, LIMIT %s."""
    order = distance(stage, metric, sql.SQL("embedding"), sql.SQL("%s"), exact=exact)
    return sql.SQL("SELECT image_id FROM {} ORDER BY {} LIMIT %s").format(sql.Identifier(table), order)


# ---------------------------------------------------------------- batched kNN on Citus

# A batch's vectors on Citus go into knn_queries (a reference table) for one search; one statement
# then runs clipvdb_knn_shard (migration 0011) on every shard of images: a multi-shard query over
# knn_anchors (migration 0013, one row per shard). Its join to the batch's first row of knn_queries
# makes each task read the placement this transaction's COPY wrote, which Citus does on the
# connection that wrote it (a worker's shards one after another there, the workers in parallel):
# without the join a task on a fresh connection would see no vectors.
COPY_KNN_QUERIES = "COPY knn_queries (batch_id, ord, v, h, p) FROM STDIN WITH (FORMAT BINARY)"
KNN_SHARDS = """SELECT f.* FROM knn_anchors a
JOIN knn_queries q ON q.batch_id = %s AND q.ord = 1
CROSS JOIN LATERAL clipvdb_knn_shard(a.anchor, q.batch_id, %s, %s, %s, %s, %s, %s, %s, %s) f"""
KNN_SHARD_PLAN = "SELECT * FROM clipvdb_knn_shard_plan(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
KNN_ANCHORS = "SELECT anchor FROM knn_anchors ORDER BY anchor"
# the shards of images that the anchors reach
KNN_ANCHOR_SHARDS = (
    "SELECT count(DISTINCT get_shard_id_for_distribution_column('images', a)) FROM unnest(%s::bigint[]) a"
)
# migration 0013's fill, for a cluster whose shards changed after it ran (after CLEAR_KNN_ANCHORS)
CLEAR_KNN_ANCHORS = "DELETE FROM knn_anchors"
FILL_KNN_ANCHORS = """INSERT INTO knn_anchors
SELECT DISTINCT ON (shard) v FROM (
    SELECT get_shard_id_for_distribution_column('images', v) AS shard, v
    FROM generate_series(1, 64 * (SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'images'::regclass)) AS v
) s ORDER BY shard, v
ON CONFLICT DO NOTHING"""


def knn_shard(
    stage: Stage,
    metric: str = "l2",
    *,
    exact: bool = False,
    projected_dim: int | None = None,
    learned_dim: int | None = None,
    similarity: bool = False,
    shards: int = 1,
) -> tuple[str, list[str]]:
    """The per-shard statement of a batched kNN search on Citus, and the tables whose shard names
    clipvdb_knn_shard puts in (%1$I the searched table, %2$I the projections, %3$I images, %4$I
    knn_queries). Its parameters: $1 the batch, $2 k, $3 space, $4 dataset, $5 split, $6 the
    distinct candidates of a projected index (over `shards` shards). The same search as `knn`
    (`_nearest`), each query read from the batch's rows of knn_queries; rows as `knn`'s, with
    similarity NULL unless asked for; each shard's k nearest with ties broken by image id, as on one
    node, so that the coordinator's merge by (distance, image id) gives the single node's k."""
    at = _on_shard(shards)
    query: sql.Composable
    if learned_dim is not None:
        query = sql.SQL("(q.v)::vector({})").format(sql.Literal(learned_dim))
        nearest = _nearest(stage, "l2", at, query, exact=exact, learned_dim=learned_dim)
        table = stage.learned_table
    else:
        query = sql.SQL("q.v") if stage.column_type == "vector" else sql.SQL("q.h")
        projected = sql.SQL("q.p") if projected_dim is not None else None
        nearest = _nearest(stage, metric, at, query, exact=exact, projected=projected, projected_dim=projected_dim)
        table = stage.table
    sim: sql.Composable = sql.SQL("NULL::float8")
    sim_join: sql.Composable = sql.SQL("")
    if similarity:
        sim, sim_join = _similarity_of(stage, at, query, learned=learned_dim is not None)
    statement = sql.SQL(
        """SELECT q.ord, n.image_id, i.label, i.source, n.distance::float8, ({sim})::float8
        FROM %4$I q
        CROSS JOIN LATERAL ({nearest}) n
        JOIN {images} i ON i.id = n.image_id{sim_join}
        WHERE q.batch_id = $1"""
    ).format(sim=sim, nearest=nearest, images=at.images, sim_join=sim_join)
    return statement.as_string(None), [table, stage.projection_table, "images", "knn_queries"]
