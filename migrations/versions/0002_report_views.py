"""Report views: runs, accuracy, timing, confusion, per-class accuracy, distance histogram.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

The view SQL below is a frozen copy of sql/*.sql as of this revision. To change a view, edit its
file in sql/ and add a new revision with a new frozen copy; tests/test_migrations.py checks that
the newest copy of each view equals its file.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VIEWS = {
    "report_runs": """\
-- One row per evaluation run: what was asked and how far it got.
CREATE OR REPLACE VIEW report_runs AS
SELECT r.id AS run_id,
       d.name AS dataset,
       r.split,
       r.stages,
       r.model,
       r.weights,
       r.k,
       r.params,
       r.status,
       (SELECT count(DISTINCT p.image_id) FROM predictions p WHERE p.run_id = r.id) AS images,
       r.started_at,
       r.finished_at,
       extract(epoch FROM r.finished_at - r.started_at) AS seconds
FROM eval_runs r
JOIN datasets d ON d.id = r.dataset_id;
""",
    "report_accuracy": """\
-- Accuracy by run and stage, complete runs only.
CREATE OR REPLACE VIEW report_accuracy AS
SELECT p.run_id,
       p.stage,
       r.k,
       count(*) AS n,
       count(*) FILTER (WHERE p.predicted = p.true_label) AS correct,
       round(100.0 * count(*) FILTER (WHERE p.predicted = p.true_label) / count(*), 2) AS accuracy_pct
FROM predictions p
JOIN eval_runs r ON r.id = p.run_id
WHERE r.status = 'complete'
GROUP BY p.run_id, p.stage, r.k;
""",
    "report_timing": """\
-- Encoder and query time per image, by run and stage (milliseconds), complete runs only.
CREATE OR REPLACE VIEW report_timing AS
SELECT p.run_id,
       p.stage,
       count(*) AS n,
       avg(p.encode_ms) AS encode_ms_mean,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY p.encode_ms) AS encode_ms_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY p.encode_ms) AS encode_ms_p95,
       avg(p.query_ms) AS query_ms_mean,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY p.query_ms) AS query_ms_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY p.query_ms) AS query_ms_p95,
       sum(p.encode_ms) / 1000.0 AS encode_s_total,
       sum(p.query_ms) / 1000.0 AS query_s_total
FROM predictions p
JOIN eval_runs r ON r.id = p.run_id
WHERE r.status = 'complete'
GROUP BY p.run_id, p.stage;
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
       count(*) AS n
FROM predictions p
JOIN eval_runs r ON r.id = p.run_id
JOIN classes ct ON ct.dataset_id = r.dataset_id AND ct.label = p.true_label
LEFT JOIN classes cp ON cp.dataset_id = r.dataset_id AND cp.label = p.predicted
WHERE r.status = 'complete'
GROUP BY p.run_id, p.stage, p.true_label, ct.name, p.predicted, cp.name;
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
       round(100.0 * count(*) FILTER (WHERE p.predicted = p.true_label) / count(*), 2) AS accuracy_pct
FROM predictions p
JOIN eval_runs r ON r.id = p.run_id
JOIN classes c ON c.dataset_id = r.dataset_id AND c.label = p.true_label
WHERE r.status = 'complete'
GROUP BY p.run_id, p.stage, p.true_label, c.name;
""",
    "report_distance_histogram": """\
-- The study's figure: distance to the nearest neighbour in 20 equal bins per (run, stage),
-- counting correct and wrong predictions separately. Bins span that run and stage's range.
CREATE OR REPLACE VIEW report_distance_histogram AS
WITH p AS (
    SELECT p.run_id,
           p.stage,
           p.distance,
           p.predicted = p.true_label AS correct,
           min(p.distance) OVER w AS lo,
           max(p.distance) OVER w AS hi
    FROM predictions p
    JOIN eval_runs r ON r.id = p.run_id
    WHERE r.status = 'complete' AND p.distance IS NOT NULL
    WINDOW w AS (PARTITION BY p.run_id, p.stage)
), b AS (
    SELECT run_id, stage, lo, hi, correct,
           CASE WHEN hi = lo THEN 1 ELSE least(width_bucket(distance, lo, hi, 20), 20) END AS bin
    FROM p
)
SELECT run_id,
       stage,
       bin,
       lo + (bin - 1) * (hi - lo) / 20.0 AS bin_lo,
       lo + bin * (hi - lo) / 20.0 AS bin_hi,
       count(*) FILTER (WHERE correct) AS n_correct,
       count(*) FILTER (WHERE NOT correct) AS n_wrong
FROM b
GROUP BY run_id, stage, bin, lo, hi;
""",
}


def upgrade() -> None:
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
