"""One run may cover several models: predictions and run_neighbors carry the model's place in the run.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05

`clipvdb evaluate --model A,B` records one run: each model's predictions over the same images, one
model after another. predictions and run_neighbors gain `model_no` (the model's place in
eval_runs.params->'models', each entry that model's name, weights, what it searched and its pass's
times; 0 for a run of one model, whose model stays eval_runs.model) and it joins their keys. Every
report view that reads them groups by it and names the model beside the stage: report_accuracy and
report_timing as before, report_accuracy_by_k, report_confusion, report_class_accuracy and the
distance views gain model (and weights) columns. On Citus both tables stay distributed by image id;
the new column and keys are made on every shard by the ALTER TABLE. The view SQL below is a frozen
copy of sql/ as of this revision. Downgrade needs every run to cover one model.
"""

import importlib.util
from pathlib import Path

from alembic import op
from sqlalchemy import text

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

VIEWS = {
    "report_accuracy": """\
-- Accuracy by run and stage, complete runs only. space says which space was searched: raw (the
-- stored embeddings) or learned (the stage's learned map, clipvdb learn), so raw and learned runs
-- sit side by side. model and weights name the encoder whose vectors were searched (stage first is
-- pixels whatever the model): a run of several models (evaluate --model A,B) has a row per model
-- and stage, its predictions told apart by model_no, the model's place in eval_runs.params->'models'
-- (0 in a run of one model, whose model is eval_runs.model).
CREATE OR REPLACE VIEW report_accuracy AS
SELECT p.run_id,
       p.stage,
       r.k,
       count(*) AS n,
       count(*) FILTER (WHERE p.predicted = p.true_label) AS correct,
       round(100.0 * count(*) FILTER (WHERE p.predicted = p.true_label) / count(*), 2) AS accuracy_pct,
       CASE WHEN coalesce(r.params->'models'->(p.model_no::int), r.params) ? 'learned' AND coalesce(r.params->'models'->(p.model_no::int), r.params)->'learned' <> 'null'::jsonb
                 AND p.stage <> 'origin'
            THEN 'learned' ELSE 'raw' END AS space,
       CASE WHEN p.stage = 'first' THEN 'pixels' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'model', r.model) END AS model,
       CASE WHEN p.stage = 'first' THEN 'none' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'weights', r.weights) END AS weights,
       p.model_no
FROM predictions p
JOIN eval_runs r ON r.id = p.run_id
WHERE r.status = 'complete'
GROUP BY p.run_id, p.model_no, p.stage, r.k, r.params, r.model, r.weights;
""",
    "report_accuracy_by_k": """\
-- Accuracy at each k and vote from one search: an evaluate that scores several k (--k 1,5,20)
-- stores each query's nearest neighbours once (run_neighbors), and every (k, vote) is counted here.
-- Votes: majority (ties to the label of the nearest neighbour), weighted (1 / distance), dino
-- (exp(cosine similarity / 0.07), DINO's weighted k-NN); ties to the nearest neighbour, then the label.
-- model and weights as in report_accuracy: a run of several models has a row per model, stage, k and vote.
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
    SELECT n.run_id, n.model_no, n.stage, n.image_id, ks.k, n.label,
           count(*)::float8 AS majority,
           sum(1.0 / greatest(n.distance, 1e-12))::float8 AS weighted,
           sum(exp(n.similarity / 0.07))::float8 AS dino,
           min(n.distance) AS nearest
    FROM run_neighbors n
    JOIN ks ON ks.run_id = n.run_id AND n.rank <= ks.k
    GROUP BY n.run_id, n.model_no, n.stage, n.image_id, ks.k, n.label
),
picked AS (
    SELECT DISTINCT ON (v.run_id, v.model_no, v.stage, v.image_id, v.k, s.vote)
           v.run_id, v.model_no, v.stage, v.image_id, v.k, s.vote, v.label
    FROM votes v
    CROSS JOIN LATERAL (VALUES ('majority', v.majority), ('weighted', v.weighted), ('dino', v.dino)) AS s(vote, score)
    ORDER BY v.run_id, v.model_no, v.stage, v.image_id, v.k, s.vote, s.score DESC NULLS LAST, v.nearest, v.label
)
SELECT p.run_id, p.stage, p.k, p.vote,
       count(*) AS n,
       count(*) FILTER (WHERE p.label = t.true_label) AS correct,
       round(100.0 * count(*) FILTER (WHERE p.label = t.true_label) / count(*), 2) AS accuracy_pct,
       CASE WHEN p.stage = 'first' THEN 'pixels' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'model', r.model) END AS model,
       CASE WHEN p.stage = 'first' THEN 'none' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'weights', r.weights) END AS weights,
       p.model_no
FROM picked p
JOIN predictions t ON t.run_id = p.run_id AND t.model_no = p.model_no AND t.stage = p.stage AND t.image_id = p.image_id
JOIN eval_runs r ON r.id = p.run_id
GROUP BY p.run_id, p.model_no, p.stage, p.k, p.vote, r.params, r.model, r.weights;
""",
    "report_class_accuracy": """\
-- Accuracy per true class, by run and stage.
CREATE OR REPLACE VIEW report_class_accuracy AS
SELECT p.run_id,
       p.stage,
       p.true_label AS label,
       c.name AS class,
       count(*) AS n,
       count(*) FILTER (WHERE p.predicted = p.true_label) AS correct,
       round(100.0 * count(*) FILTER (WHERE p.predicted = p.true_label) / count(*), 2) AS accuracy_pct,
       CASE WHEN p.stage = 'first' THEN 'pixels' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'model', r.model) END AS model,
       CASE WHEN p.stage = 'first' THEN 'none' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'weights', r.weights) END AS weights,
       p.model_no
FROM predictions p
JOIN eval_runs r ON r.id = p.run_id
JOIN classes c ON c.dataset_id = r.dataset_id AND c.label = p.true_label
WHERE r.status = 'complete'
GROUP BY p.run_id, p.model_no, p.stage, p.true_label, c.name, r.params, r.model, r.weights;
""",
    "report_confusion": """\
-- Confusion matrix in long form: one row per (true class, predicted class) pair that occurred.
CREATE OR REPLACE VIEW report_confusion AS
SELECT p.run_id,
       p.stage,
       p.true_label,
       ct.name AS true_class,
       p.predicted AS predicted_label,
       cp.name AS predicted_class,
       count(*) AS n,
       CASE WHEN p.stage = 'first' THEN 'pixels' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'model', r.model) END AS model,
       CASE WHEN p.stage = 'first' THEN 'none' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'weights', r.weights) END AS weights,
       p.model_no
FROM predictions p
JOIN eval_runs r ON r.id = p.run_id
JOIN classes ct ON ct.dataset_id = r.dataset_id AND ct.label = p.true_label
LEFT JOIN classes cp ON cp.dataset_id = r.dataset_id AND cp.label = p.predicted
WHERE r.status = 'complete'
GROUP BY p.run_id, p.model_no, p.stage, p.true_label, ct.name, p.predicted, cp.name, r.params, r.model, r.weights;
""",
    "report_distance_histogram": """\
-- Distance to the nearest neighbour (plain, not squared: see report_distance_summary for the
-- study's squared-L2 axis) in 20 equal bins per (run, stage), counting correct and wrong
-- predictions separately. Bins span that run and stage's range (a run of several models: per model,
-- as in report_accuracy).
CREATE OR REPLACE VIEW report_distance_histogram AS
WITH p AS (
    SELECT p.run_id,
           p.model_no,
           p.stage,
           CASE WHEN p.stage = 'first' THEN 'pixels' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'model', r.model) END AS model,
           CASE WHEN p.stage = 'first' THEN 'none' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'weights', r.weights) END AS weights,
           coalesce(p.nearest_distance, p.distance) AS distance,
           p.predicted = p.true_label AS correct,
           min(coalesce(p.nearest_distance, p.distance)) OVER w AS lo,
           max(coalesce(p.nearest_distance, p.distance)) OVER w AS hi
    FROM predictions p
    JOIN eval_runs r ON r.id = p.run_id
    WHERE r.status = 'complete' AND coalesce(p.nearest_distance, p.distance) IS NOT NULL
    WINDOW w AS (PARTITION BY p.run_id, p.model_no, p.stage)
), b AS (
    SELECT run_id, model_no, model, weights, stage, lo, hi, correct,
           CASE WHEN hi = lo THEN 1 ELSE least(width_bucket(distance, lo, hi, 20), 20) END AS bin
    FROM p
)
SELECT run_id,
       stage,
       bin,
       lo + (bin - 1) * (hi - lo) / 20.0 AS bin_lo,
       lo + bin * (hi - lo) / 20.0 AS bin_hi,
       count(*) FILTER (WHERE correct) AS n_correct,
       count(*) FILTER (WHERE NOT correct) AS n_wrong,
       model,
       weights,
       model_no
FROM b
GROUP BY run_id, model_no, model, weights, stage, bin, lo, hi;
""",
    "report_distance_summary": """\
-- Distance to the nearest stored neighbour per run, stage and outcome (correct, wrong, all):
-- n, mean and median, plain and squared. The study's histograms and medians (85.47 at stage
-- first) are Pinecone "euclidean" scores, which are squared L2: compare them with *_squared.
-- metric names the distance: l2 (Euclidean), cosine (1 - cosine similarity; origin's zero-shot
-- distance to the best class prompt is always cosine) or ip (negative inner product). model, weights
-- and model_no as in report_accuracy.
CREATE OR REPLACE VIEW report_distance_summary AS
WITH p AS (
    SELECT p.run_id,
           p.model_no,
           p.stage,
           CASE WHEN p.stage = 'first' THEN 'pixels' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'model', r.model) END AS model,
           CASE WHEN p.stage = 'first' THEN 'none' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'weights', r.weights) END AS weights,
           CASE WHEN p.stage = 'origin' THEN 'cosine' ELSE coalesce(r.params->>'metric', 'l2') END AS metric,
           p.predicted = p.true_label AS correct,
           coalesce(p.nearest_distance, p.distance) AS d
    FROM predictions p
    JOIN eval_runs r ON r.id = p.run_id
    WHERE r.status = 'complete' AND coalesce(p.nearest_distance, p.distance) IS NOT NULL
)
SELECT p.run_id,
       p.stage,
       p.metric,
       o.outcome,
       count(*) AS n,
       avg(p.d) AS mean,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY p.d) AS median,
       avg(p.d * p.d) AS mean_squared,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY p.d * p.d) AS median_squared,
       p.model,
       p.weights,
       p.model_no
FROM p
CROSS JOIN LATERAL (VALUES ('all'), (CASE WHEN p.correct THEN 'correct' ELSE 'wrong' END)) AS o(outcome)
GROUP BY p.run_id, p.model_no, p.model, p.weights, p.stage, p.metric, o.outcome;
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
-- the encoder whose pass and vectors the stage's figures are (stage first: pixels). A run of several
-- models encodes the images once per model, one model after another: each model's store, other and
-- wall times and what ran at once are its own pass's (eval_runs.params->'models').
CREATE OR REPLACE VIEW report_timing AS
WITH p AS (
    SELECT p.*
    FROM predictions p
    JOIN eval_runs r ON r.id = p.run_id
    WHERE r.status = 'complete'
), per_image AS (
    SELECT run_id,
           model_no,
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
    GROUP BY run_id, model_no, stage
), per_batch AS (
    SELECT run_id,
           model_no,
           stage,
           count(*) AS query_batches,
           avg(batch_size) AS batch_size_mean,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY batch_query_ms) AS batch_query_ms_p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY batch_query_ms) AS batch_query_ms_p95
    FROM (SELECT DISTINCT run_id, model_no, stage, batch_no, batch_size, batch_query_ms FROM p) b
    GROUP BY run_id, model_no, stage
), m AS (
    SELECT i.*, coalesce(r.params->'models'->(i.model_no::int), r.params) AS mp
    FROM per_image i
    JOIN eval_runs r ON r.id = i.run_id
)
SELECT i.run_id,
       i.stage,
       i.n,
       i.decode_ms_mean,
       i.encode_ms_mean,
       i.encode_ms_p50,
       i.encode_ms_p95,
       i.query_ms_mean,
       i.query_ms_p50,
       i.query_ms_p95,
       i.encode_s_total,
       i.query_s_total,
       b.query_batches,
       b.batch_size_mean,
       b.batch_query_ms_p50,
       b.batch_query_ms_p95,
       CASE WHEN r.params->>'timing' = 'wall share' THEN 'wall share' ELSE 'summed batches' END AS timing,
       (i.mp->>'connections')::int AS connections,
       (i.mp->>'workers')::int AS workers,
       (i.mp->>'encoder_threads')::int AS encoder_threads,
       (i.mp->>'cores')::int AS cores,
       1000.0 * (i.mp->>'store_s')::float8 / i.n AS store_ms_mean,
       1000.0 * (i.mp->>'other_s')::float8 / i.n AS other_ms_mean,
       1000.0 * (i.mp->>'wall_s')::float8 / i.n AS wall_ms_per_image,
       CASE WHEN i.stage = 'first' THEN 'pixels' ELSE coalesce(i.mp->>'model', r.model) END AS model,
       CASE WHEN i.stage = 'first' THEN 'none' ELSE coalesce(i.mp->>'weights', r.weights) END AS weights,
       i.model_no
FROM m i
JOIN per_batch b USING (run_id, model_no, stage)
JOIN eval_runs r ON r.id = i.run_id;
""",
}
KEYS = {
    "predictions": ("predictions_pkey", "run_id, stage, image_id"),
    "run_neighbors": ("run_neighbors_pkey", "run_id, stage, image_id, rank"),
}


def _views_before() -> dict[str, str]:
    """The newest frozen copy of each view in the revisions before this one (the downgrade's)."""
    latest: dict[str, str] = {}
    for path in sorted(Path(__file__).parent.glob("[0-9]*.py")):
        if path.name >= "0020":
            break
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        latest.update(getattr(module, "VIEWS", {}))
    return latest


def _one_connection_per_node() -> None:
    """On Citus, the ALTER TABLEs on distributed tables one connection per node, so that the views can
    be made in the same transaction after them (refused after a parallel operation)."""
    if op.get_bind().execute(text("SELECT clipvdb_distributed()")).scalar():
        op.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")


def upgrade() -> None:
    _one_connection_per_node()
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for table, (key, columns) in KEYS.items():
        # two statements, the constraint named: Citus adds no unnamed constraint with a column
        op.execute(f"ALTER TABLE {table} ADD COLUMN model_no smallint NOT NULL DEFAULT 0")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_model_no_check CHECK (model_no >= 0)")
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {key}")
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {key} PRIMARY KEY ({columns.replace('stage', 'model_no, stage')})"
        )
        op.execute(
            f"COMMENT ON COLUMN {table}.model_no IS 'the model''s place in eval_runs.params->''models'' "
            "(a run of several models); 0 in a run of one'"
        )
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    _one_connection_per_node()  # before the guard's SELECT, itself a parallel operation on Citus
    n = (
        op.get_bind()
        .execute(
            text(
                "SELECT count(*) FROM (SELECT run_id FROM predictions WHERE model_no > 0 "
                "UNION SELECT run_id FROM run_neighbors WHERE model_no > 0) several"
            )
        )
        .scalar()
    )
    if n:
        raise RuntimeError(
            f"{n} run(s) cover several models, which revision 0019 cannot hold: delete them before downgrading "
            "(in psql: CREATE TEMP TABLE several AS SELECT run_id FROM predictions WHERE model_no > 0 UNION "
            "SELECT run_id FROM run_neighbors WHERE model_no > 0; then DELETE FROM run_neighbors, predictions "
            "and eval_runs WHERE their run is in it)"
        )
    before = _views_before()
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for table, (key, columns) in KEYS.items():
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {key}")
        op.execute(f"ALTER TABLE {table} DROP COLUMN model_no")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {key} PRIMARY KEY ({columns})")
    for name in VIEWS:
        op.execute(before[name])
