"""Batched kNN on Citus: a batch's query vectors shipped once, every shard searched in one call.

On Citus a batch of kNN queries cannot be one statement (Citus refuses a LATERAL ORDER BY ... LIMIT
over a distributed table). Instead the batch's vectors go by binary COPY into knn_queries, a
reference table (a copy on every node), inside the search's transaction, which rolls back at the
end; then clipvdb_knn_shard(anchor, ...) runs once per shard, delegated by Citus to the worker that
holds the shard of `anchor`, where it runs the single node's LATERAL top-k over that shard and the
co-located images shard. The coordinator merges the shards' top k per query. The per-shard
statement is composed by clipvdb (queries.knn_shard); the function puts in the shard names,
applies the index settings, and runs it as its caller. clipvdb_knn_shard_plan() gives the
statement's EXPLAIN ANALYZE on a shard.

On plain PostgreSQL the table stays empty and the functions unused. clipvdb_distribute() places
them too (0010's version, frozen here with these additions).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TABLE = """
CREATE TABLE knn_queries (
    batch_id bigint NOT NULL,
    ord int NOT NULL,
    v vector,
    h halfvec,
    p halfvec,
    PRIMARY KEY (batch_id, ord)
);
-- in line, never TOASTed: a 3,072-d halfvec (6 KB) would otherwise be compressed out of line and
-- decompressed for every row a query is compared with
ALTER TABLE knn_queries ALTER COLUMN v SET STORAGE PLAIN, ALTER COLUMN h SET STORAGE PLAIN,
    ALTER COLUMN p SET STORAGE PLAIN;
COMMENT ON TABLE knn_queries IS 'a kNN batch''s query vectors on Citus, for the length of one search (rolled back)';
"""

SHARD_FUNCTIONS = """
CREATE OR REPLACE FUNCTION clipvdb_knn_shard(
    anchor bigint, batch bigint, statement text, tables text[], k int, candidates int,
    space int, dataset int, split text, settings text[]
) RETURNS TABLE (ord int, image_id bigint, label int, source text, distance float8, similarity float8)
LANGUAGE plpgsql AS $$
DECLARE
    -- the shard of each table that holds `anchor` (knn_queries: its one shard), in the order of
    -- the statement's %1$I, %2$I, ...; plpgsql, so that these Citus functions are looked up when
    -- it runs, not when it is created
    shards text[] := ARRAY(
        SELECT shard_name(t::regclass, get_shard_id_for_distribution_column(
                   t::regclass, CASE WHEN t = 'knn_queries' THEN NULL ELSE anchor END))
        FROM unnest(tables) WITH ORDINALITY AS u(t, n) ORDER BY n);
BEGIN
    FOR i IN 1 .. coalesce(array_length(settings, 1), 0) / 2 LOOP
        PERFORM set_config(settings[2 * i - 1], settings[2 * i], true);
    END LOOP;
    RETURN QUERY EXECUTE format(statement, VARIADIC shards)
        USING batch, k, space, dataset, split, candidates;
END $$;

CREATE OR REPLACE FUNCTION clipvdb_knn_shard_plan(
    anchor bigint, batch bigint, statement text, tables text[], k int, candidates int,
    space int, dataset int, split text, settings text[]
) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    -- the shard of each table that holds `anchor` (knn_queries: its one shard), in the order of
    -- the statement's %1$I, %2$I, ...; plpgsql, so that these Citus functions are looked up when
    -- it runs, not when it is created
    shards text[] := ARRAY(
        SELECT shard_name(t::regclass, get_shard_id_for_distribution_column(
                   t::regclass, CASE WHEN t = 'knn_queries' THEN NULL ELSE anchor END))
        FROM unnest(tables) WITH ORDINALITY AS u(t, n) ORDER BY n);
BEGIN
    FOR i IN 1 .. coalesce(array_length(settings, 1), 0) / 2 LOOP
        PERFORM set_config(settings[2 * i - 1], settings[2 * i], true);
    END LOOP;
    RETURN QUERY EXECUTE 'EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) '
        || format(statement, VARIADIC shards)
        USING batch, k, space, dataset, split, candidates;
END $$;

REVOKE EXECUTE ON FUNCTION clipvdb_knn_shard(bigint, bigint, text, text[], int, int, int, int, text, text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION clipvdb_knn_shard_plan(bigint, bigint, text, text[], int, int, int, int, text, text[])
    FROM PUBLIC;
"""

# placed by clipvdb_distribute(): the table as a reference table, the functions delegated to the
# worker that holds the anchor's shard (inside the search's transaction: force_delegation)
PLACE = """
IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'knn_queries'::regclass) THEN
        PERFORM create_reference_table('knn_queries');
        placed := placed + 1;
    END IF;
    PERFORM create_distributed_function(f::regprocedure, 'anchor', colocate_with => 'images', force_delegation => true)
    FROM unnest(ARRAY['clipvdb_knn_shard(bigint, bigint, text, text[], int, int, int, int, text, text[])',
                      'clipvdb_knn_shard_plan(bigint, bigint, text, text[], int, int, int, int, text, text[])']) AS f;
    RETURN format('%s tables placed', placed);"""
PLACED_MARK = "RETURN format('%s tables placed', placed);"


def _previous_functions() -> str:
    spec = importlib.util.spec_from_file_location("m0010", Path(__file__).with_name("0010_accuracy_by_k.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FUNCTIONS


def _functions() -> str:
    """0010's functions, clipvdb_distribute() placing knn_queries and the shard functions too."""
    before = _previous_functions()
    assert before.count(PLACED_MARK) == 1
    return before.replace(PLACED_MARK, PLACE.strip(), 1)


def upgrade() -> None:
    op.execute(TABLE)
    op.execute(SHARD_FUNCTIONS)
    op.execute(_functions())
    op.execute(
        """
        DO $$
        BEGIN
            IF clipvdb_distributed() THEN
                PERFORM create_reference_table('knn_queries');
                PERFORM create_distributed_function(f::regprocedure, 'anchor', colocate_with => 'images',
                                                    force_delegation => true)
                FROM unnest(ARRAY[
                    'clipvdb_knn_shard(bigint, bigint, text, text[], int, int, int, int, text, text[])',
                    'clipvdb_knn_shard_plan(bigint, bigint, text, text[], int, int, int, int, text, text[])'
                ]) AS f;
            END IF;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute(_previous_functions())
    op.execute(
        "DROP FUNCTION IF EXISTS clipvdb_knn_shard_plan(bigint, bigint, text, text[], int, int, int, int, text, text[])"
    )
    op.execute(
        "DROP FUNCTION IF EXISTS clipvdb_knn_shard(bigint, bigint, text, text[], int, int, int, int, text, text[])"
    )
    op.execute("DROP TABLE IF EXISTS knn_queries")
