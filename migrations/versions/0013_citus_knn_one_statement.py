"""Batched kNN on Citus in one statement over every shard.

0011 searched a batch with one delegated call per shard, one after another. Here a table with one
row per shard of images, knn_anchors, lets one statement reach every shard: a multi-shard query over
it calls clipvdb_knn_shard(anchor, ...) on each shard's worker. The statement joins the batch's
first row of knn_queries, the reference table the search's COPY wrote in the same transaction;
Citus runs a task that reads a placement written in the transaction on the connection that wrote
it, so every task sees the batch's vectors: the workers search in parallel, each worker's shards
one after another on that connection.

knn_anchors is distributed by `anchor` and co-located with images, so its rows move with the
shards when a worker is added or drained. On plain PostgreSQL it stays empty and unused.
clipvdb_distribute() places and fills it too (0011's version, frozen here with these additions).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TABLE = """
CREATE TABLE knn_anchors (anchor bigint PRIMARY KEY);
COMMENT ON TABLE knn_anchors IS 'on Citus, one id value per shard of images: a batched kNN search runs a task on each anchor''s shard';
"""

# one id value in each shard of images (64 candidates per shard: a shard is missed with
# probability e^-64; a searcher checks that every shard has its anchor)
FILL = """INSERT INTO knn_anchors
        SELECT DISTINCT ON (shard) v FROM (
            SELECT get_shard_id_for_distribution_column('images', v) AS shard, v
            FROM generate_series(1, 64 * (SELECT count(*) FROM pg_dist_shard
                                           WHERE logicalrelid = 'images'::regclass)) AS v
        ) s ORDER BY shard, v
        ON CONFLICT DO NOTHING"""

PLACE = f"""
IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'knn_anchors'::regclass) THEN
        PERFORM create_distributed_table('knn_anchors', 'anchor', colocate_with => 'images');
        placed := placed + 1;
    END IF;
    {FILL};
    RETURN format('%s tables placed', placed);"""
PLACED_MARK = "RETURN format('%s tables placed', placed);"


def _functions_of_0011() -> str:
    spec = importlib.util.spec_from_file_location("m0011", Path(__file__).with_name("0011_citus_batched_knn.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._functions()


def _functions() -> str:
    """0011's functions, clipvdb_distribute() placing and filling knn_anchors too."""
    before = _functions_of_0011()
    assert before.count(PLACED_MARK) == 1
    return before.replace(PLACED_MARK, PLACE.strip(), 1)


def upgrade() -> None:
    op.execute(TABLE)
    op.execute(_functions())
    op.execute(
        f"""
        DO $$
        BEGIN
            IF clipvdb_distributed() THEN
                PERFORM create_distributed_table('knn_anchors', 'anchor', colocate_with => 'images');
                {FILL};
            END IF;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute(_functions_of_0011())
    op.execute("DROP TABLE IF EXISTS knn_anchors")
