"""Data that lives: datasets.changed_at, report_runs says whether a run is still current, and
near-duplicate pairs (duplicate_pairs, report_duplicates); report_accuracy and report_timing name
the model (and weights) beside each stage.

Ingest (when it stores new rows), delete and relabel set datasets.changed_at; report_runs compares it
with each run's start (`current`, `data_changed_at`). Datasets stored before have no changed_at: their
runs count as current. duplicate_pairs holds what `clipvdb duplicates` found: per embedding space
and dataset, an image, its nearest image of the split searched and their distance, when at most the
scan's threshold; on Citus a reference table (small, joined with the distributed images), so its
rows name images without a foreign key and a delete removes them itself. Deleting an image deletes by image id from every table that refers to it
(each foreign key's cascade looks its rows up by image_id): those columns get an index where no key
led with them. The view SQL below is a frozen copy of sql/report_accuracy.sql, report_timing.sql,
report_duplicates.sql and report_runs.sql as of this revision.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04
"""

import importlib.util
from pathlib import Path

from alembic import op
from sqlalchemy import text

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

STAGE_NAMES = ("first", "second", "third", "origin")
# (index, table, column): the referring columns no index led with
LOOKUPS = [(f"embeddings_{s}_image", f"embeddings_{s}", "image_id") for s in STAGE_NAMES] + [
    ("predictions_image", "predictions", "image_id"),
    ("predictions_neighbor", "predictions", "neighbor_id"),
    ("cluster_members_image", "cluster_members", "image_id"),
]

VIEWS = {
    "report_accuracy": """\
-- Accuracy by run and stage, complete runs only. space says which space was searched: raw (the
-- stored embeddings) or learned (the stage's learned map, clipvdb learn), so raw and learned runs
-- sit side by side. model and weights name the encoder whose vectors were searched (stage first is
-- pixels whatever the model), so runs of several models sit side by side too.
CREATE OR REPLACE VIEW report_accuracy AS
SELECT p.run_id,
       p.stage,
       r.k,
       count(*) AS n,
       count(*) FILTER (WHERE p.predicted = p.true_label) AS correct,
       round(100.0 * count(*) FILTER (WHERE p.predicted = p.true_label) / count(*), 2) AS accuracy_pct,
       CASE WHEN r.params ? 'learned' AND r.params->'learned' <> 'null'::jsonb AND p.stage <> 'origin'
            THEN 'learned' ELSE 'raw' END AS space,
       CASE WHEN p.stage = 'first' THEN 'pixels' ELSE r.model END AS model,
       CASE WHEN p.stage = 'first' THEN 'none' ELSE r.weights END AS weights
FROM predictions p
JOIN eval_runs r ON r.id = p.run_id
WHERE r.status = 'complete'
GROUP BY p.run_id, p.stage, r.k, r.params, r.model, r.weights;
""",
    "report_timing": """\
-- Time by run and stage (milliseconds per image), complete runs only. Times are what an image costs:
-- the run's wall time shared among the work in progress (timing 'wall share'): at every moment the
-- time elapsed is split among the pieces running then (a batch decoding, being encoded, searched at
-- a stage on a connection, stored) in proportion to their threads (an encoder pass: the encoder's
-- threads; any other piece: one), so overlapping work is never counted twice.
-- encode_ms at a stage is the cumulative cost of the encoder pass up to that stage's depth (stages
-- asked together share one pass: deeper stages include the shallower ones). Per image,
-- decode_ms_mean + the deepest stage's encode_ms_mean + every stage's query_ms_mean + store_ms_mean
-- + other_ms_mean = wall_ms_per_image. batch_query_ms_* are a statement's own time, taken over
-- batches (query_batches of them), not over images. connections, workers (decoding processes),
-- encoder_threads and cores say what ran at once. Runs recorded before timing 'wall share' are
-- 'summed batches': each batch's own time, overlapping work counted in each. model and weights:
-- the encoder whose pass and vectors the stage's figures are (stage first: pixels).
CREATE OR REPLACE VIEW report_timing AS
WITH p AS (
    SELECT p.*
    FROM predictions p
    JOIN eval_runs r ON r.id = p.run_id
    WHERE r.status = 'complete'
), per_image AS (
    SELECT run_id,
           stage,
           count(*) AS n,
           avg(decode_ms) AS decode_ms_mean,
           avg(encode_ms) AS encode_ms_mean,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY encode_ms) AS encode_ms_p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY encode_ms) AS encode_ms_p95,
           avg(query_ms) AS query_ms_mean,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY query_ms) AS query_ms_p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY query_ms) AS query_ms_p95,
           sum(encode_ms) / 1000.0 AS encode_s_total,
           sum(query_ms) / 1000.0 AS query_s_total
    FROM p
    GROUP BY run_id, stage
), per_batch AS (
    SELECT run_id,
           stage,
           count(*) AS query_batches,
           avg(batch_size) AS batch_size_mean,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY batch_query_ms) AS batch_query_ms_p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY batch_query_ms) AS batch_query_ms_p95
    FROM (SELECT DISTINCT run_id, stage, batch_no, batch_size, batch_query_ms FROM p) b
    GROUP BY run_id, stage
)
SELECT i.*,
       b.query_batches,
       b.batch_size_mean,
       b.batch_query_ms_p50,
       b.batch_query_ms_p95,
       CASE WHEN r.params->>'timing' = 'wall share' THEN 'wall share' ELSE 'summed batches' END AS timing,
       (r.params->>'connections')::int AS connections,
       (r.params->>'workers')::int AS workers,
       (r.params->>'encoder_threads')::int AS encoder_threads,
       (r.params->>'cores')::int AS cores,
       1000.0 * (r.params->>'store_s')::float8 / i.n AS store_ms_mean,
       1000.0 * (r.params->>'other_s')::float8 / i.n AS other_ms_mean,
       1000.0 * (r.params->>'wall_s')::float8 / i.n AS wall_ms_per_image,
       CASE WHEN i.stage = 'first' THEN 'pixels' ELSE r.model END AS model,
       CASE WHEN i.stage = 'first' THEN 'none' ELSE r.weights END AS weights
FROM per_image i
JOIN per_batch b USING (run_id, stage)
JOIN eval_runs r ON r.id = i.run_id;
""",
    "report_duplicates": """\
-- Near-duplicate pairs found by 'clipvdb duplicates': per embedding space and dataset, an image, its
-- nearest stored image of the split searched (other_split) and their distance, at most the scan's
-- threshold. same_label says whether the two share a class; a test image with a training duplicate
-- is a leak (its nearest neighbour answers from a copy of itself).
CREATE OR REPLACE VIEW report_duplicates AS
SELECT p.space_id,
       p.dataset_id,
       s.model,
       s.stage,
       d.name AS dataset,
       p.image_id,
       i.split,
       i.source,
       ci.name AS class,
       p.other_id,
       o.split AS other_split,
       o.source AS other_source,
       co.name AS other_class,
       p.distance,
       i.label = o.label AS same_label,
       p.threshold,
       p.found_at
FROM duplicate_pairs p
JOIN embedding_spaces s ON s.id = p.space_id
JOIN datasets d ON d.id = p.dataset_id
JOIN images i ON i.id = p.image_id
JOIN images o ON o.id = p.other_id
JOIN classes ci ON ci.dataset_id = i.dataset_id AND ci.label = i.label
JOIN classes co ON co.dataset_id = o.dataset_id AND co.label = o.label;
""",
    "report_runs": """\
-- One row per evaluation run: what was asked, everything that changes an answer, how far it got.
-- current: no image of the run's dataset was stored, deleted or relabelled since the run started
-- (datasets.changed_at, set by ingest, delete, relabel); a run that is not current answered from a
-- stored set that has changed since.
CREATE OR REPLACE VIEW report_runs AS
SELECT r.id AS run_id,
       d.name AS dataset,
       r.split,
       r.stages,
       r.model,
       r.weights,
       r.k,
       coalesce(r.params->>'metric', 'l2') AS metric,
       coalesce((r.params->>'exact')::boolean, false) AS exact,
       r.params->'index' AS index,
       r.params->'storage' AS storage,
       (r.params->>'probes')::int AS probes,
       (r.params->>'ef_search')::int AS ef_search,
       (r.params->>'candidates')::int AS candidates,
       r.params->>'prompts' AS prompts,
       r.params,
       r.status,
       coalesce(n.images, 0) AS images,
       r.started_at,
       r.finished_at,
       extract(epoch FROM r.finished_at - r.started_at) AS seconds,
       d.changed_at AS data_changed_at,
       d.changed_at IS NULL OR d.changed_at <= r.started_at AS current
FROM eval_runs r
JOIN datasets d ON d.id = r.dataset_id
-- a join, not a correlated subquery: Citus plans joins across shards, not correlated subqueries
LEFT JOIN (SELECT run_id, count(DISTINCT image_id) AS images FROM predictions GROUP BY run_id) n ON n.run_id = r.id;
""",
}


def _functions_of_0015() -> str:
    spec = importlib.util.spec_from_file_location("m0015", Path(__file__).with_name("0015_embedding_spaces.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._functions()


def _functions() -> str:
    """0015's functions, clipvdb_distribute() placing duplicate_pairs as a reference table."""
    out = _functions_of_0015()
    old = "'experiment_results', 'clusterings'"
    assert old in out
    return out.replace(old, "'experiment_results', 'duplicate_pairs', 'clusterings'")


def _distributed() -> bool:
    return bool(op.get_bind().execute(text("SELECT clipvdb_distributed()")).scalar())


def _frozen_views_of(filename: str) -> dict[str, str]:
    """An earlier revision's frozen view copies (the downgrade restores them)."""
    spec = importlib.util.spec_from_file_location(filename[:-3], Path(__file__).with_name(filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VIEWS


def upgrade() -> None:
    distributed = _distributed()
    if distributed:
        # one connection per worker, so that creating a reference table later in this transaction works
        op.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
    op.execute("ALTER TABLE datasets ADD COLUMN changed_at timestamptz")
    op.execute(
        "COMMENT ON COLUMN datasets.changed_at IS "
        "'when an image of the dataset was last stored, deleted or relabelled (NULL: not since this column came)'"
    )
    for name, table, column in LOOKUPS:
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({column})")
    # one statement at a time: on Citus the table becomes a reference table before its keys to the
    # reference tables embedding_spaces and datasets are added
    op.execute(
        """CREATE TABLE duplicate_pairs (
            space_id int NOT NULL,
            dataset_id int NOT NULL,
            image_id bigint NOT NULL,
            split text NOT NULL,
            other_id bigint NOT NULL,
            other_split text NOT NULL,
            distance double precision NOT NULL,
            threshold double precision NOT NULL,
            found_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (space_id, image_id, other_id)
        )"""
    )
    if distributed:
        op.execute("SELECT create_reference_table('duplicate_pairs')")
    op.execute("CREATE INDEX duplicate_pairs_image ON duplicate_pairs (image_id)")
    op.execute("CREATE INDEX duplicate_pairs_other ON duplicate_pairs (other_id)")
    for column, parent in (("space_id", "embedding_spaces"), ("dataset_id", "datasets")):
        op.execute(f"ALTER TABLE duplicate_pairs ADD FOREIGN KEY ({column}) REFERENCES {parent} (id) ON DELETE CASCADE")
    op.execute(_functions())
    # new columns at the end: CREATE OR REPLACE keeps what depends on the view
    for view in VIEWS.values():
        op.execute(view)


def downgrade() -> None:
    op.execute(_functions_of_0015())
    op.execute("DROP VIEW IF EXISTS report_duplicates")
    op.execute("DROP TABLE IF EXISTS duplicate_pairs")
    op.execute("DROP VIEW IF EXISTS report_runs")
    op.execute(_frozen_views_of("0008_citus.py")["report_runs"])
    op.execute("DROP VIEW IF EXISTS report_accuracy")
    op.execute(_frozen_views_of("0007_clusterings.py")["report_accuracy"])
    op.execute("DROP VIEW IF EXISTS report_timing")
    op.execute(_frozen_views_of("0014_timing_wall_share.py")["report_timing"])
    op.execute("ALTER TABLE datasets DROP COLUMN changed_at")
    for name, _, _ in LOOKUPS:
        op.execute(f"DROP INDEX IF EXISTS {name}")
