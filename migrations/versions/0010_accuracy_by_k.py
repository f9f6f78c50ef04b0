"""Accuracy by k and vote from one search: run_neighbors and report_accuracy_by_k.

An evaluate that scores several k (`--k 1,5,20`) stores each query's nearest neighbours once, with
their distance and cosine similarity; report_accuracy_by_k counts the accuracy at every k under
every vote (majority, distance-weighted, DINO's weighted k-NN). On Citus run_neighbors is
distributed by image id, co-located with predictions, and `clipvdb_distribute()` places it too.
The view SQL below is a frozen copy of sql/report_accuracy_by_k.sql as of this revision.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

VIEWS = {
    "report_accuracy_by_k": """\
-- Accuracy at each k and vote from one search: an evaluate that scores several k (--k 1,5,20)
-- stores each query's nearest neighbours once (run_neighbors), and every (k, vote) is counted here.
-- Votes: majority (ties to the label of the nearest neighbour), weighted (1 / distance), dino
-- (exp(cosine similarity / 0.07), DINO's weighted k-NN); ties to the nearest neighbour, then the label.
CREATE OR REPLACE VIEW report_accuracy_by_k AS
WITH ks AS (
    SELECT r.id AS run_id, k.value::int AS k
    FROM eval_runs r
    CROSS JOIN LATERAL jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(r.params->'ks') = 'array' THEN r.params->'ks' ELSE '[]'::jsonb END
    ) AS k(value)
    WHERE r.status = 'complete'
),
votes AS (
    SELECT n.run_id, n.stage, n.image_id, ks.k, n.label,
           count(*)::float8 AS majority,
           sum(1.0 / greatest(n.distance, 1e-12))::float8 AS weighted,
           sum(exp(n.similarity / 0.07))::float8 AS dino,
           min(n.distance) AS nearest
    FROM run_neighbors n
    JOIN ks ON ks.run_id = n.run_id AND n.rank <= ks.k
    GROUP BY n.run_id, n.stage, n.image_id, ks.k, n.label
),
picked AS (
    SELECT DISTINCT ON (v.run_id, v.stage, v.image_id, v.k, s.vote)
           v.run_id, v.stage, v.image_id, v.k, s.vote, v.label
    FROM votes v
    CROSS JOIN LATERAL (VALUES ('majority', v.majority), ('weighted', v.weighted), ('dino', v.dino)) AS s(vote, score)
    ORDER BY v.run_id, v.stage, v.image_id, v.k, s.vote, s.score DESC NULLS LAST, v.nearest, v.label
)
SELECT p.run_id, p.stage, p.k, p.vote,
       count(*) AS n,
       count(*) FILTER (WHERE p.label = t.true_label) AS correct,
       round(100.0 * count(*) FILTER (WHERE p.label = t.true_label) / count(*), 2) AS accuracy_pct
FROM picked p
JOIN predictions t ON t.run_id = p.run_id AND t.stage = p.stage AND t.image_id = p.image_id
GROUP BY p.run_id, p.stage, p.k, p.vote;
""",
}

TABLE = """
CREATE TABLE run_neighbors (
    run_id int NOT NULL,
    stage text NOT NULL CHECK (stage IN ('first', 'second', 'third', 'origin')),
    image_id bigint NOT NULL,
    rank smallint NOT NULL CHECK (rank >= 1),
    neighbor_id bigint NOT NULL,
    label int NOT NULL,
    distance double precision NOT NULL,
    similarity double precision,
    PRIMARY KEY (run_id, stage, image_id, rank)
);
COMMENT ON TABLE run_neighbors IS 'each query''s nearest stored neighbours, for an evaluate that scores several k';
COMMENT ON COLUMN run_neighbors.similarity IS 'cosine similarity of the neighbour to the query (the dino vote)';
"""

PLACE = """
IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'run_neighbors'::regclass) THEN
        PERFORM create_distributed_table('run_neighbors', 'image_id', colocate_with => 'images');
        placed := placed + 1;
    END IF;
    RETURN format('%s tables placed', placed);"""
PLACED_MARK = "RETURN format('%s tables placed', placed);"


def _functions_of(filename: str) -> str:
    """An earlier revision's SQL functions, as CREATE OR REPLACE."""
    spec = importlib.util.spec_from_file_location(filename[:-3], Path(__file__).with_name(filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FUNCTIONS.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")


# 0008's functions, clipvdb_distribute() placing run_neighbors too (frozen as of this revision)
FUNCTIONS = _functions_of("0008_citus.py").replace(PLACED_MARK, PLACE.strip(), 1)


def upgrade() -> None:
    op.execute(TABLE)
    for text in VIEWS.values():
        op.execute(text)
    assert PLACE.strip() in FUNCTIONS
    op.execute(FUNCTIONS)
    op.execute(
        """
        DO $$
        BEGIN
            IF clipvdb_distributed() THEN
                PERFORM create_distributed_table('run_neighbors', 'image_id', colocate_with => 'images');
            END IF;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS report_accuracy_by_k")
    op.execute("DROP TABLE IF EXISTS run_neighbors")
    op.execute(_functions_of("0008_citus.py"))
