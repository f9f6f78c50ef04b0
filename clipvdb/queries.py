"""Every SQL statement that names a table, index or type chosen at run time, composed in one place
with psycopg.sql (identifiers as sql.Identifier, never formatted text). Statements with nothing to
compose are plain strings in the module that uses them; report views are files under sql/.

A stage's kNN statement is built by `knn`, its index DDL by `create_index`, its row counts by
`counts` (read from stage_counts, kept by triggers: no count(*) scan).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from psycopg import sql

from . import config
from .stages import Stage

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


def _type(stage: Stage) -> sql.Composable:
    return sql.SQL("{}({})").format(sql.SQL(stage.column_type), sql.Literal(stage.dim))


def distance(stage: Stage, metric: str, column: sql.Composable, query: sql.Composable, *, exact: bool) -> sql.Composed:
    """`column <op> query::type`, or with `exact` the function form, which matches no index operator
    and so is always an exact scan (enable_indexscan=off only penalises index paths)."""
    op, fn = METRICS[metric]
    q = sql.SQL("({})::{}").format(query, _type(stage))
    if not exact:
        return sql.SQL("{} {} {}").format(column, sql.SQL(op), q)
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
    order = sql.SQL("c.proj <-> ({})::{}({})").format(query, sql.SQL(PROJECTION_TYPE), sql.Literal(projected_dim))
    return sql.SQL(
        """SELECT c.space_id, c.image_id
        FROM (
            SELECT c.space_id, c.image_id, dense_rank() OVER (ORDER BY c.pd) AS vector_rank
            FROM (
                SELECT c.space_id, c.image_id, {order} AS pd FROM {proj} c
                WHERE {where}
                ORDER BY {order}
                LIMIT {n} * {rows}
            ) c
        ) c
        WHERE c.vector_rank <= {n}"""
    ).format(order=order, proj=table, where=where, n=n, rows=sql.Literal(int(rows_per_vector)))


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
    learned: bool = False,
    projected: sql.Composable | None = None,
    projected_dim: int | None = None,
) -> sql.Composed:
    """One query's k nearest rows (image_id, distance), ties at equal distance by image id: `query`
    against the table's vectors (a learned space's: `query` already mapped there, L2 only), or, with
    `projected_dim`, the rows of the nearest distinct projected vectors (`projected` the query's
    projection) re-ranked by the exact distance on the full embedding."""
    where = sql.SQL("x.space_id = {} AND x.dataset_id = {} AND x.split = {}").format(at.space, at.dataset, at.split)
    if learned:
        dist = sql.SQL("l2_distance(x.vec, {})" if exact else "x.vec <-> {}").format(query)
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
    stage: Stage, at: _Place, query: sql.Composable, learned_dim: int | None
) -> tuple[sql.Composable, sql.Composable]:
    """The cosine similarity of each neighbor to its query (the dino vote's), looked up by key for
    the k rows a query returns, never for every row scanned: (its expression, the join it needs)."""
    if learned_dim is not None:
        expr = sql.SQL("1 - cosine_distance(s.vec, ({})::vector({}))").format(query, sql.Literal(learned_dim))
    else:
        expr = sql.SQL("1 - cosine_distance(s.embedding, ({})::{})").format(query, _type(stage))
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
        nearest = _nearest(stage, "l2", at, query, exact=exact, learned=True)
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
        expr, sim_join = _similarity_of(stage, at, query if learned_dim is None else sql.SQL("q.p"), learned_dim)
        sim = sql.SQL(", {} AS similarity").format(expr)
    return sql.SQL(
        """SELECT q.ord, n.image_id, i.label, i.source, n.distance{sim}
        FROM {queries_in}
        CROSS JOIN LATERAL ({nearest}) n
        JOIN {images} i ON i.id = n.image_id{sim_join}
        ORDER BY q.ord, n.distance, n.image_id"""
    ).format(sim=sim, queries_in=queries_in, nearest=nearest, images=at.images, sim_join=sim_join)


SAVE_LEARNED_MAP = """INSERT INTO learned_maps
    (stage, method, dims, mean, matrix, fitted_rows, params, fit_seconds, fitted_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())
    ON CONFLICT (stage) DO UPDATE SET method = EXCLUDED.method, dims = EXCLUDED.dims, mean = EXCLUDED.mean,
      matrix = EXCLUDED.matrix, fitted_rows = EXCLUDED.fitted_rows, params = EXCLUDED.params,
      fit_seconds = EXCLUDED.fit_seconds, fitted_at = EXCLUDED.fitted_at"""
LOAD_LEARNED_MAP = (
    "SELECT method, dims, mean, matrix, fitted_rows, params, fit_seconds FROM learned_maps WHERE stage = %s"
)


def retype_learned(stage: Stage, dims: int) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ALTER COLUMN vec TYPE vector({})").format(
        sql.Identifier(stage.learned_table), sql.Literal(dims)
    )


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


# ---------------------------------------------------------------- counts


def counts(stage: Stage) -> sql.Composed:
    """(n_rows, n_projected) of one space, dataset and split: %(space)s, %(dataset)s, %(split)s."""
    return sql.SQL(
        """SELECT coalesce(sum(n_rows), 0)::bigint, coalesce(sum(n_projected), 0)::bigint FROM stage_counts
           WHERE stage = {} AND space_id = %(space)s AND dataset_id = %(dataset)s AND split = %(split)s"""
    ).format(sql.Literal(stage.name))


def learned_count(stage: Stage) -> sql.Composed:
    """Rows of learned_<stage> for one space, dataset and split (a --learned search's coverage check)."""
    return sql.SQL(
        "SELECT count(*) FROM {} WHERE space_id = %(space)s AND dataset_id = %(dataset)s AND split = %(split)s"
    ).format(sql.Identifier(stage.learned_table))


def total_rows(stage: Stage) -> sql.Composed:
    """Rows stored at a stage, all spaces, datasets and splits."""
    return sql.SQL("SELECT coalesce(sum(n_rows), 0)::bigint FROM stage_counts WHERE stage = {}").format(
        sql.Literal(stage.name)
    )


def space_rows(stage: Stage) -> sql.Composed:
    """(model, weights, rows) per embedding space holding rows at this stage, most first."""
    return sql.SQL(
        """SELECT s.model, s.weights, sum(c.n_rows)::bigint FROM stage_counts c
           JOIN embedding_spaces s ON s.id = c.space_id
           WHERE c.stage = {} AND c.n_rows > 0 GROUP BY s.model, s.weights ORDER BY 3 DESC"""
    ).format(sql.Literal(stage.name))


# ---------------------------------------------------------------- datasets, classes, images, spaces

UPSERT_SPACE = """INSERT INTO embedding_spaces (model, weights, stage, dim) VALUES (%s, %s, %s, %s)
    ON CONFLICT (model, weights, stage) DO UPDATE SET dim = embedding_spaces.dim
    RETURNING id, dim"""
FIND_SPACE = "SELECT id FROM embedding_spaces WHERE model = %s AND weights = %s AND stage = %s"
UPSERT_DATASET = """INSERT INTO datasets (name, source) VALUES (%s, %s)
    ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id"""
DATASET_BY_NAME = "SELECT id FROM datasets WHERE name = %s"
DATASET_NAME = "SELECT name FROM datasets WHERE id = %s"
DATASETS = "SELECT id, name FROM datasets ORDER BY id"
CLASS_NAMES = "SELECT name FROM classes WHERE dataset_id = %s ORDER BY label"
INSERT_CLASS = "INSERT INTO classes (dataset_id, label, name) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
FIND_IMAGES = "SELECT source, id FROM images WHERE dataset_id = %s AND split = %s AND source = ANY(%s)"
ADVISORY_XACT_LOCK = "SELECT pg_advisory_xact_lock(%s)"
SAMPLE_IMAGES = """SELECT i.id, c.name FROM images i JOIN classes c ON c.dataset_id = i.dataset_id AND c.label = i.label
    WHERE i.split <> 'train' ORDER BY i.id LIMIT %s"""
STAGES_WITH_ROWS = "SELECT DISTINCT stage FROM stage_counts WHERE n_rows > 0"
IMAGE_SOURCE = "SELECT d.source, i.split, i.source FROM images i JOIN datasets d ON d.id = i.dataset_id WHERE i.id = %s"


def stored_keys(stage: Stage) -> sql.Composed:
    return sql.SQL(
        """SELECT i.source FROM {} e JOIN images i ON i.id = e.image_id
           WHERE e.space_id = %(space)s AND e.dataset_id = %(dataset)s AND e.split = %(split)s"""
    ).format(sql.Identifier(stage.table))


# ---------------------------------------------------------------- loading

COLUMN_TYPE = """SELECT format_type(atttypid, atttypmod) FROM pg_attribute
    WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped"""


def retype_stage(stage: Stage, *, distributed: bool = False) -> list[sql.Composed]:
    """The stage's vector columns (its embeddings, its cluster centres) as the stage's type; the
    embeddings kept in line (a type change resets a column's storage to the type's default), except
    on Citus, which refuses SET STORAGE on a distributed table."""
    table = sql.Identifier(stage.table)
    retype = sql.SQL("ALTER TABLE {} ALTER COLUMN embedding TYPE {}").format(table, _type(stage))
    out = [retype if distributed else retype + sql.SQL(", ALTER COLUMN embedding SET STORAGE PLAIN")]
    out.append(
        sql.SQL("ALTER TABLE {} ALTER COLUMN centre TYPE {}").format(
            sql.Identifier(f"cluster_centres_{stage.name}"), _type(stage)
        )
    )
    return out


def copy_stage(stage: Stage) -> sql.Composed:
    return sql.SQL("COPY {} (space_id, image_id, dataset_id, split, embedding) FROM STDIN WITH (FORMAT BINARY)").format(
        sql.Identifier(stage.table)
    )


def staging_name(stage: Stage) -> str:
    return f"staging_{stage.name}"


def staging_table(stage: Stage) -> sql.Identifier:
    return sql.Identifier(staging_name(stage))


def create_staging(stage: Stage) -> sql.Composed:
    return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (image_id bigint, embedding {}) ON COMMIT DELETE ROWS").format(
        staging_table(stage), _type(stage)
    )


def copy_staging(stage: Stage) -> sql.Composed:
    return sql.SQL("COPY {} (image_id, embedding) FROM STDIN WITH (FORMAT BINARY)").format(staging_table(stage))


def insert_from_staging(stage: Stage) -> sql.Composed:
    return sql.SQL(
        """INSERT INTO {table} (space_id, image_id, dataset_id, split, embedding)
           SELECT %s, s.image_id, i.dataset_id, i.split, s.embedding
           FROM {staging} s JOIN images i ON i.id = s.image_id ORDER BY s.image_id
           ON CONFLICT (space_id, image_id) DO NOTHING"""
    ).format(table=sql.Identifier(stage.table), staging=staging_table(stage))


def insert_images(*, on_conflict: bool) -> sql.Composed:
    """New image rows: (dataset, split, keys[], labels[], sha256s[]). `on_conflict` skips rows a
    concurrent ingest stored first (plain PostgreSQL; Citus has no unique key to name)."""
    return sql.SQL(
        """INSERT INTO images (dataset_id, split, label, source, sha256)
           SELECT %s, %s, l, k, h FROM unnest(%s::text[], %s::int[], %s::bytea[]) AS t(k, l, h)
           ORDER BY k{}"""
    ).format(sql.SQL(" ON CONFLICT (dataset_id, split, source) DO NOTHING" if on_conflict else ""))


def truncate(table: str) -> sql.Composed:
    return sql.SQL("TRUNCATE {}").format(sql.Identifier(table))


def analyze(table: str) -> sql.Composed:
    return sql.SQL("ANALYZE {}").format(sql.Identifier(table))


# ---------------------------------------------------------------- projections


def sample_embeddings(stage: Stage, percent: float | None) -> sql.Composed:
    """Every stored embedding of the stage, or a repeatable Bernoulli sample of `percent`."""
    sample = (
        sql.SQL("")
        if percent is None
        else sql.SQL(" TABLESAMPLE BERNOULLI ({}) REPEATABLE (0)").format(sql.Literal(float(percent)))
    )
    return sql.SQL("SELECT embedding FROM {}{}").format(sql.Identifier(stage.table), sample)


def all_embeddings(stage: Stage) -> sql.Composed:
    return sql.SQL("SELECT space_id, image_id, dataset_id, split, embedding FROM {}").format(
        sql.Identifier(stage.table)
    )


# a stage's PCA basis: (stage, dim, mean, components, fitted_rows, variance_kept)
SAVE_PROJECTION = """INSERT INTO stage_projections (stage, dim, mean, components, fitted_rows, variance_kept, fitted_at)
    VALUES (%s, %s, %s, %s, %s, %s, now())
           ON CONFLICT (stage) DO UPDATE SET dim = EXCLUDED.dim, mean = EXCLUDED.mean,
             components = EXCLUDED.components, fitted_rows = EXCLUDED.fitted_rows,
             variance_kept = EXCLUDED.variance_kept, fitted_at = EXCLUDED.fitted_at"""
LOAD_PROJECTION = "SELECT dim, mean, components, fitted_rows, variance_kept FROM stage_projections WHERE stage = %s"
DELETE_PROJECTION = "DELETE FROM stage_projections WHERE stage = %s"


def retype_projection(stage: Stage, dim: int) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ALTER COLUMN proj TYPE {}({})").format(
        sql.Identifier(stage.projection_table), sql.SQL(PROJECTION_TYPE), sql.Literal(dim)
    )


def copy_mapped(table: str, column: str) -> sql.Composed:
    """COPY into a table of mapped vectors (projections_<stage>.proj, learned_<stage>.vec)."""
    return sql.SQL("COPY {} (space_id, image_id, dataset_id, split, {}) FROM STDIN WITH (FORMAT BINARY)").format(
        sql.Identifier(table), sql.Identifier(column)
    )


def insert_mapped(table: str, column: str, column_type: str = "vector") -> sql.Composed:
    """Mapped vectors of newly stored rows: %(ids)s image ids, %(mapped)b their vectors (sent as
    vector[], stored as `column_type`)."""
    return sql.SQL(
        """INSERT INTO {} (space_id, image_id, dataset_id, split, {})
           SELECT %(space)s, u.id, %(dataset)s, %(split)s, u.v::{}
           FROM unnest(%(ids)s::int8[], %(mapped)b::vector[]) AS u(id, v)
           ON CONFLICT (space_id, image_id) DO NOTHING"""
    ).format(sql.Identifier(table), sql.Identifier(column), sql.SQL(column_type))


# ---------------------------------------------------------------- indexes


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


# ---------------------------------------------------------------- experiments


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
    return sql.SQL(
        "CREATE TEMP TABLE {} AS SELECT image_id, embedding FROM {} WHERE space_id = %s ORDER BY image_id LIMIT %s"
    ).format(sql.Identifier(table), sql.Identifier(stage.table))


def drop_table(table: str) -> sql.Composed:
    return sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table))


def latest_embeddings(stage: Stage) -> sql.Composed:
    return sql.SQL("SELECT embedding FROM {} WHERE space_id = %s ORDER BY image_id DESC LIMIT %s").format(
        sql.Identifier(stage.table)
    )


# ---------------------------------------------------------------- evaluation runs

INSERT_RUN = """INSERT INTO eval_runs (dataset_id, split, stages, model, weights, k, params)
    VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id"""
COMPLETE_RUN = """UPDATE eval_runs SET status = 'complete', finished_at = now(), params = params || %s::jsonb
    WHERE id = %s"""
FAIL_RUN = "UPDATE eval_runs SET status = 'failed', finished_at = now() WHERE id = %s"
COPY_RUN_NEIGHBORS = """COPY run_neighbors (run_id, stage, image_id, rank, neighbor_id, label, distance, similarity)
    FROM STDIN WITH (FORMAT BINARY)"""
LATEST_RUN = "SELECT max(id) FROM eval_runs WHERE status = 'complete'"
# A running run's session holds a session-level advisory lock (RUN_LOCK_KEY, run id), taken before
# the run's row commits; a 'running' run whose lock nobody holds was cut short (its process killed).
RUN_LOCK_KEY = 1668051574  # 'clrv'
LOCK_RUN = "SELECT pg_advisory_lock(%s, %s)"
UNLOCK_RUN = "SELECT pg_advisory_unlock(%s, %s)"
RUNNING_RUNS = "SELECT id FROM eval_runs WHERE status = 'running'"
HELD_RUN_LOCKS = """SELECT objid::int8 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = %s::int8::oid
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""
FAIL_RUNS = "UPDATE eval_runs SET status = 'failed', finished_at = now() WHERE id = ANY(%s) AND status = 'running'"


def copy_predictions(columns: tuple[str, ...]) -> sql.Composed:
    return sql.SQL("COPY predictions ({}) FROM STDIN WITH (FORMAT BINARY)").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )


# ---------------------------------------------------------------- reports


_STAGE_ORDER = "array_position(ARRAY['first','second','third','origin'], stage)"
# each report view's row order: runs, then stages in forward-pass order
REPORT_ORDER = {
    "report_runs": "run_id",
    "report_accuracy": f"run_id, {_STAGE_ORDER}",
    "report_timing": f"run_id, {_STAGE_ORDER}",
    "report_confusion": f"run_id, {_STAGE_ORDER}, true_label, predicted_label",
    "report_class_accuracy": f"run_id, {_STAGE_ORDER}, label",
    "report_distance_histogram": f"run_id, {_STAGE_ORDER}, bin",
    "report_distance_summary": f"run_id, {_STAGE_ORDER}, array_position(ARRAY['all','correct','wrong'], outcome)",
    "report_accuracy_by_k": f"run_id, {_STAGE_ORDER}, k, array_position(ARRAY['majority','weighted','dino'], vote)",
}


def report_view(view: str, with_run: bool) -> sql.Composed:
    """SELECT * from a report view in its order, for one run (%s) or every run."""
    where = sql.SQL(" WHERE run_id = %s") if with_run else sql.SQL("")
    return sql.SQL("SELECT * FROM {}{} ORDER BY {}").format(sql.Identifier(view), where, sql.SQL(REPORT_ORDER[view]))


# ---------------------------------------------------------------- clusterings


def stage_vectors(stage: Stage) -> sql.Composed:
    """(image_id, label, embedding) of one space, dataset and split: %(space)s, %(dataset)s, %(split)s."""
    return sql.SQL(
        """SELECT e.image_id, i.label, e.embedding FROM {} e JOIN images i ON i.id = e.image_id
           WHERE e.space_id = %(space)s AND e.dataset_id = %(dataset)s AND e.split = %(split)s
           ORDER BY e.image_id"""
    ).format(sql.Identifier(stage.table))


INSERT_CLUSTERING = """INSERT INTO clusterings
    (stage, space_id, dataset_id, split, method, params, n_clusters, n_noise, fit_seconds)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"""
COPY_CLUSTER_MEMBERS = (
    "COPY cluster_members (clustering_id, image_id, cluster, distance) FROM STDIN WITH (FORMAT BINARY)"
)
CLUSTERING_EXISTS = "SELECT 1 FROM clusterings WHERE id = %s"
CLUSTER_CLASSES = """SELECT cluster, size, majority_class, purity::float8 FROM report_cluster_classes
    WHERE clustering_id = %s AND cluster >= 0 ORDER BY size DESC, cluster"""
NEAREST_MEMBERS = """SELECT image_id FROM cluster_members WHERE clustering_id = %s AND cluster = %s
    ORDER BY distance LIMIT %s"""


def clusterings(*, one: bool) -> sql.Composed:
    """Stored clusterings with their scores (report_cluster_purity), newest first; with `one`, the
    clustering %s only."""
    return sql.SQL(
        """SELECT clustering_id, stage, method, params, n, n_clusters, n_noise, fit_seconds, purity::float8,
                  adjusted_rand_index, normalized_mutual_info, sizes
           FROM report_cluster_purity{} ORDER BY clustering_id DESC"""
    ).format(sql.SQL(" WHERE clustering_id = %s" if one else ""))


def copy_centres(stage: Stage) -> sql.Composed:
    return sql.SQL("COPY {} (clustering_id, cluster, centre) FROM STDIN WITH (FORMAT BINARY)").format(
        sql.Identifier(f"cluster_centres_{stage.name}")
    )


# ---------------------------------------------------------------- server facts and benchmark tables

# (PostgreSQL version, pgvector version, shared_buffers): the head of a benchmark report
SERVER_FACTS = """SELECT current_setting('server_version'),
    (SELECT extversion FROM pg_extension WHERE extname = 'vector'), current_setting('shared_buffers')"""
BACKEND_PID = "SELECT pg_backend_pid()"
# a table's bytes with its TOAST table and indexes (a vector stored out of line lives in TOAST)
TOTAL_RELATION_SIZE = "SELECT pg_total_relation_size(%s)"
# heap (with TOAST) and index bytes of a distributed table, summed over its shards, and the shard count
SHARD_SIZES = """SELECT sum((h.result)::bigint), sum((i.result)::bigint), count(*)
    FROM run_command_on_shards(%s, 'SELECT pg_table_size(''%%s'')') h
    JOIN run_command_on_shards(%s, 'SELECT pg_indexes_size(''%%s'')') i USING (shardid)"""


# Bytes of stage first's tables on one node: rows, heap (with TOAST), its indexes, the projection
# table and its indexes, and the image rows (bench.scale).
STAGE_FIRST_BYTES = """SELECT (SELECT count(*) FROM embeddings_first),
    pg_table_size('embeddings_first'), pg_indexes_size('embeddings_first'),
    pg_table_size('projections_first'), pg_indexes_size('projections_first'),
    pg_total_relation_size('images')"""

# Every table of the schema with its indexes and TOAST, in bytes: (table, bytes).
TABLE_BYTES = """SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname = current_schema()"""

# Each query image's nearest neighbor in a run, as image ids, and the source keys of images: two
# statements, since a join of predictions to images on both ids would repartition on Citus.
RUN_NEIGHBOR_IDS = "SELECT image_id, neighbor_id FROM predictions WHERE run_id = %s AND stage = %s"
IMAGE_SOURCES = "SELECT id, source FROM images WHERE id = ANY(%s)"


def split_rows(stage: Stage) -> sql.Composed:
    """Rows stored at a stage in one split (%s), all spaces and datasets (from stage_counts)."""
    return sql.SQL("SELECT coalesce(sum(n_rows), 0)::bigint FROM stage_counts WHERE stage = {} AND split = %s").format(
        sql.Literal(stage.name)
    )


def truncate_cascade(table: str) -> sql.Composed:
    """Empty a table and the tables that reference it (a stage's projections, clusterings)."""
    return sql.SQL("TRUNCATE {} CASCADE").format(sql.Identifier(table))


def table_rows(table: str) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))


def touch_vectors(table: str) -> sql.Composed:
    """Read every stored vector of a table once (brings its pages, TOAST included, into shared buffers)."""
    return sql.SQL("SELECT sum(vector_dims(embedding)) FROM {}").format(sql.Identifier(table))


VECTOR_TYPES = ("vector", "halfvec")
STORAGE_MODES = ("PLAIN", "EXTERNAL", "EXTENDED", "MAIN")


def _vector_type(column_type: str, dim: int) -> sql.Composed:
    if column_type not in VECTOR_TYPES:
        raise ValueError(f"not a pgvector type: {column_type!r}")
    return sql.SQL("{}({})").format(sql.SQL(column_type), sql.Literal(int(dim)))


def scratch_vectors_table(table: str, column_type: str, dim: int) -> sql.Composed:
    """A scratch table of (image_id, embedding column_type(dim)) for storage comparisons."""
    return sql.SQL("CREATE TABLE {} (image_id bigint PRIMARY KEY, embedding {} NOT NULL)").format(
        sql.Identifier(table), _vector_type(column_type, dim)
    )


def column_storage(table: str, column: str, storage: str) -> sql.Composed:
    """ALTER TABLE ... SET STORAGE (STORAGE_MODES): PLAIN keeps a value in line, EXTERNAL moves a
    large one to TOAST uncompressed."""
    if storage.upper() not in STORAGE_MODES:
        raise ValueError(f"not a storage mode: {storage!r}")
    return sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STORAGE {}").format(
        sql.Identifier(table), sql.Identifier(column), sql.SQL(storage.upper())
    )


def copy_scratch_vectors(table: str) -> sql.Composed:
    return sql.SQL("COPY {} (image_id, embedding) FROM STDIN WITH (FORMAT BINARY)").format(sql.Identifier(table))


def scratch_nearest(table: str, column_type: str, dim: int) -> sql.Composed:
    """The image id nearest to %s (sent as vector) by exact L2 distance (the function form: no index
    serves it); the query is cast to the column's type so that the stored vectors are compared as they are."""
    return sql.SQL("SELECT image_id FROM {} ORDER BY l2_distance(embedding, (%s)::vector::{}) LIMIT 1").format(
        sql.Identifier(table), _vector_type(column_type, dim)
    )


# ---------------------------------------------------------------- web pages (clipvdb serve)

# every run (report_runs), newest first; numbers as float8 for the page
WEB_RUNS = """SELECT run_id, dataset, split, stages, model, weights, k, metric, exact, index, storage, probes,
       ef_search, candidates, status, images, started_at, finished_at, seconds::float8 AS seconds
    FROM report_runs ORDER BY run_id DESC"""
# accuracy per run and stage over every run (report_accuracy), in forward-pass order
WEB_ACCURACY = f"""SELECT run_id, stage, k, n, correct, accuracy_pct::float8 AS accuracy_pct, space
    FROM report_accuracy ORDER BY run_id, {_STAGE_ORDER}"""
# one run's slowest query batches: %(run)s, %(limit)s. A batch is one statement, repeated on each
# of its images' prediction rows; only complete runs, as the report views.
WEB_SLOWEST_BATCHES = """SELECT b.stage, b.batch_no, b.batch_size, b.batch_query_ms
    FROM (SELECT DISTINCT p.stage, p.batch_no, p.batch_size, p.batch_query_ms
          FROM predictions p JOIN eval_runs r ON r.id = p.run_id
          WHERE p.run_id = %(run)s AND r.status = 'complete' AND p.batch_query_ms IS NOT NULL) b
    ORDER BY b.batch_query_ms DESC, b.stage, b.batch_no LIMIT %(limit)s"""
# one run's most confident wrong answers per stage: the smallest distance to the neighbor that
# decided the (wrong) label; %(run)s, %(limit)s per stage
WEB_CONFIDENT_WRONG = f"""SELECT stage, image_id, neighbor_id, true_class, predicted_class, distance
    FROM (SELECT p.stage, p.image_id, p.neighbor_id, ct.name AS true_class, cp.name AS predicted_class,
                 p.distance, row_number() OVER (PARTITION BY p.stage ORDER BY p.distance, p.image_id) AS rank
          FROM predictions p
          JOIN eval_runs r ON r.id = p.run_id
          JOIN classes ct ON ct.dataset_id = r.dataset_id AND ct.label = p.true_label
          LEFT JOIN classes cp ON cp.dataset_id = r.dataset_id AND cp.label = p.predicted
          WHERE p.run_id = %(run)s AND r.status = 'complete' AND p.predicted <> p.true_label
            AND p.distance IS NOT NULL) w
    WHERE rank <= %(limit)s ORDER BY {_STAGE_ORDER}, rank"""
# search experiments (report_experiments), newest first, then by size and setting
WEB_EXPERIMENTS = """SELECT experiment_id, stage, model, weights, size, method, params, queries,
       recall_at_1::float8 AS recall_at_1, recall_at_10::float8 AS recall_at_10, mean_ms::float8 AS mean_ms,
       p95_ms::float8 AS p95_ms, queries_per_s::float8 AS queries_per_s, build_s::float8 AS build_s, index_bytes
    FROM report_experiments ORDER BY experiment_id DESC, size, method, params::text"""
# a clustering's clusters (report_cluster_classes), largest first, with the %s members nearest the
# centre of each, nearest first: (cluster, size, majority_class, purity, image_ids[])
WEB_CLUSTER_GRID = """SELECT c.cluster, c.size, c.majority_class, c.purity::float8,
       array(SELECT m.image_id FROM cluster_members m
             WHERE m.clustering_id = c.clustering_id AND m.cluster = c.cluster
             ORDER BY m.distance, m.image_id LIMIT %(per_cluster)s) AS image_ids
    FROM report_cluster_classes c
    WHERE c.clustering_id = %(clustering)s AND c.cluster >= 0
    ORDER BY c.size DESC, c.cluster"""
# datasets and their splits: (dataset, split, classes, images)
WEB_DATASETS = """SELECT d.name, i.split, (SELECT count(*) FROM classes c WHERE c.dataset_id = d.id) AS classes,
       count(*) AS images
    FROM images i JOIN datasets d ON d.id = i.dataset_id
    GROUP BY d.id, d.name, i.split ORDER BY d.name, i.split"""
# rows per stage, model, dataset and split (stage_counts with embedding_spaces): no count(*) scan
WEB_STAGE_ROWS = """SELECT c.stage, s.model, s.weights, s.dim, d.name AS dataset, c.split,
       sum(c.n_rows)::bigint AS rows, sum(c.n_projected)::bigint AS projected
    FROM stage_counts c
    JOIN embedding_spaces s ON s.id = c.space_id
    JOIN datasets d ON d.id = c.dataset_id
    WHERE c.n_rows > 0
    GROUP BY c.stage, s.model, s.weights, s.dim, d.name, c.split
    ORDER BY array_position(ARRAY['first','second','third','origin'], c.stage), s.model, s.weights, d.name, c.split"""


# ---------------------------------------------------------------- a Citus cluster's nodes

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
        nearest = _nearest(stage, "l2", at, query, exact=exact, learned=True)
        table = stage.learned_table
    else:
        query = sql.SQL("q.v") if stage.column_type == "vector" else sql.SQL("q.h")
        projected = sql.SQL("q.p") if projected_dim is not None else None
        nearest = _nearest(stage, metric, at, query, exact=exact, projected=projected, projected_dim=projected_dim)
        table = stage.table
    sim: sql.Composable = sql.SQL("NULL::float8")
    sim_join: sql.Composable = sql.SQL("")
    if similarity:
        sim, sim_join = _similarity_of(stage, at, query if learned_dim is None else sql.SQL("q.v"), learned_dim)
    statement = sql.SQL(
        """SELECT q.ord, n.image_id, i.label, i.source, n.distance::float8, ({sim})::float8
        FROM %4$I q
        CROSS JOIN LATERAL ({nearest}) n
        JOIN {images} i ON i.id = n.image_id{sim_join}
        WHERE q.batch_id = $1"""
    ).format(sim=sim, nearest=nearest, images=at.images, sim_join=sim_join)
    return statement.as_string(None), [table, stage.projection_table, "images", "knn_queries"]
