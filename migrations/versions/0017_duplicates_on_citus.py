"""report_duplicates answers on Citus: a pair meets its first image in a materialized CTE and its
second after it, so the distributed images are never joined with themselves (Citus would need a
repartition join, which it refuses by default). Same columns, same rows.
The view SQL below is a frozen copy of sql/report_duplicates.sql as of this revision.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

VIEWS = {
    "report_duplicates": """\
-- Near-duplicate pairs found by 'clipvdb duplicates': per embedding space and dataset, an image, its
-- nearest stored image of the split searched (other_split) and their distance, at most the scan's
-- threshold. same_label says whether the two share a class; a test image with a training duplicate
-- is a leak (its nearest neighbour answers from a copy of itself).
-- The pairs meet their first image in a materialized CTE and their second after it: on Citus the two
-- images of a pair sit on different shards, and a join of the distributed images with itself through
-- the pairs would need repartitioning; the CTE's rows (the pairs, small) go to every shard instead.
CREATE OR REPLACE VIEW report_duplicates AS
WITH p AS MATERIALIZED (
    SELECT p.*, i.split AS image_split, i.source, i.label, i.dataset_id AS image_dataset
    FROM duplicate_pairs p
    JOIN images i ON i.id = p.image_id
)
SELECT p.space_id,
       p.dataset_id,
       s.model,
       s.stage,
       d.name AS dataset,
       p.image_id,
       p.image_split AS split,
       p.source,
       ci.name AS class,
       p.other_id,
       o.split AS other_split,
       o.source AS other_source,
       co.name AS other_class,
       p.distance,
       p.label = o.label AS same_label,
       p.threshold,
       p.found_at
FROM p
JOIN images o ON o.id = p.other_id
JOIN embedding_spaces s ON s.id = p.space_id
JOIN datasets d ON d.id = p.dataset_id
JOIN classes ci ON ci.dataset_id = p.image_dataset AND ci.label = p.label
JOIN classes co ON co.dataset_id = o.dataset_id AND co.label = o.label;
""",
}


def _frozen_views_of(filename: str) -> dict[str, str]:
    """An earlier revision's frozen view copies (the downgrade restores them)."""
    spec = importlib.util.spec_from_file_location(filename[:-3], Path(__file__).with_name(filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VIEWS


def upgrade() -> None:
    op.execute(VIEWS["report_duplicates"])


def downgrade() -> None:
    op.execute(_frozen_views_of("0016_living_data.py")["report_duplicates"])
