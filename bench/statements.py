"""Statements only the benchmarks use: server facts, table and shard sizes, scratch tables of
vectors, the neighbors a run stored."""

from __future__ import annotations

from psycopg import sql

from clipvdb.stages import Stage

# (PostgreSQL version, pgvector version, shared_buffers): the head of a benchmark report
SERVER_FACTS = """SELECT current_setting('server_version'),
    (SELECT extversion FROM pg_extension WHERE extname = 'vector'), current_setting('shared_buffers')"""
BACKEND_PID = "SELECT pg_backend_pid()"
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
# the stored training images, in id order (bench.growth chooses what it deletes and relabels)
TRAIN_SOURCES = "SELECT id, source FROM images WHERE split = 'train' ORDER BY id"
# each query image's predicted label in a run at a stage, by source key
RUN_PREDICTED = """SELECT q.source, p.predicted FROM predictions p JOIN images q ON q.id = p.image_id
    WHERE p.run_id = %s AND p.stage = %s"""


def space_vector_bytes(stage: Stage) -> sql.Composed:
    """The mean stored size of one space's (%s) vectors at a stage."""
    return sql.SQL("SELECT avg(pg_column_size(embedding))::float8 FROM {} WHERE space_id = %s").format(
        sql.Identifier(stage.table)
    )


def learned_vector_bytes(stage: Stage) -> sql.Composed:
    """The mean stored size of one space's (%s) vectors in the stage's learned space."""
    return sql.SQL("SELECT avg(pg_column_size(vec))::float8 FROM {} WHERE space_id = %s").format(
        sql.Identifier(stage.learned_table)
    )


# an index's bytes on disk, by name (%s)
INDEX_BYTES = "SELECT coalesce(pg_relation_size(to_regclass(%s)), 0)::bigint"


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
