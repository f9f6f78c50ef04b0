"""Row counts kept by triggers, honest timing columns, the distance summary, run parameters.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22

- stage_counts: rows and projected rows per (stage, space, dataset, split), kept by statement-level
  triggers on the stage and projection tables (inserts, COPY, deletes and cascades, TRUNCATE), so
  a search's set-up reads one row instead of scanning the stage table with count(*).
- predictions: decode_ms, batch_no, batch_size, batch_query_ms (a batch of queries is one
  statement: its time is recorded as what it is), nearest_distance (with k > 1, the distance to the
  nearest neighbour; distance stays the nearest neighbour of the predicted label).
- Views: report_runs shows the parameters that change an answer; report_timing separates decode,
  encode, query and store and says over what its percentiles are taken; report_distance_summary
  (plain and squared distances: the study's axis is squared L2).

The view SQL below is a frozen copy of sql/*.sql as of this revision.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STAGES = ("first", "second", "third", "origin")

VIEWS = {
    "report_runs": """\
-- One row per evaluation run: what was asked, everything that changes an answer, how far it got.
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
       (SELECT count(DISTINCT p.image_id) FROM predictions p WHERE p.run_id = r.id) AS images,
       r.started_at,
       r.finished_at,
       extract(epoch FROM r.finished_at - r.started_at) AS seconds
FROM eval_runs r
JOIN datasets d ON d.id = r.dataset_id;
""",
    "report_timing": """\
-- Time by run and stage (milliseconds), complete runs only. Per image: decode, encode and query
-- are recorded apart (storing is per run: report_runs.params->'store_s'). encode_ms is the encoder pass up to this stage (several stages share
-- one pass, so deeper stages include the shallower ones). A batch of queries is one SQL statement:
-- query_ms is that statement's time divided by the batch size, and the batch_query_ms_* columns
-- are taken over batches (query_batches of them), not over images.
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
       b.batch_query_ms_p95
FROM per_image i
JOIN per_batch b USING (run_id, stage);
""",
    "report_distance_histogram": """\
-- Distance to the nearest neighbour (plain, not squared: see report_distance_summary for the
-- study's squared-L2 axis) in 20 equal bins per (run, stage), counting correct and wrong
-- predictions separately. Bins span that run and stage's range.
CREATE OR REPLACE VIEW report_distance_histogram AS
WITH p AS (
    SELECT p.run_id,
           p.stage,
           coalesce(p.nearest_distance, p.distance) AS distance,
           p.predicted = p.true_label AS correct,
           min(coalesce(p.nearest_distance, p.distance)) OVER w AS lo,
           max(coalesce(p.nearest_distance, p.distance)) OVER w AS hi
    FROM predictions p
    JOIN eval_runs r ON r.id = p.run_id
    WHERE r.status = 'complete' AND coalesce(p.nearest_distance, p.distance) IS NOT NULL
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
    "report_distance_summary": """\
-- Distance to the nearest stored neighbour per run, stage and outcome (correct, wrong, all):
-- n, mean and median, plain and squared. The study's histograms and medians (85.47 at stage
-- first) are Pinecone "euclidean" scores, which are squared L2: compare them with *_squared.
-- metric names the distance: l2 (Euclidean), cosine (1 - cosine similarity; origin's zero-shot
-- distance to the best class prompt is always cosine) or ip (negative inner product).
CREATE OR REPLACE VIEW report_distance_summary AS
WITH p AS (
    SELECT p.run_id,
           p.stage,
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
       percentile_cont(0.5) WITHIN GROUP (ORDER BY p.d * p.d) AS median_squared
FROM p
CROSS JOIN LATERAL (VALUES ('all'), (CASE WHEN p.correct THEN 'correct' ELSE 'wrong' END)) AS o(outcome)
GROUP BY p.run_id, p.stage, p.metric, o.outcome;
""",
}

COUNT_FUNCTIONS = """
CREATE FUNCTION clipvdb_count_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_ARGV[1] = 'rows' THEN
        INSERT INTO stage_counts AS c (stage, space_id, dataset_id, split, n_rows)
        SELECT TG_ARGV[0], space_id, dataset_id, split, count(*) FROM added GROUP BY space_id, dataset_id, split
        ORDER BY space_id, dataset_id, split
        ON CONFLICT (stage, space_id, dataset_id, split) DO UPDATE SET n_rows = c.n_rows + EXCLUDED.n_rows;
    ELSE
        INSERT INTO stage_counts AS c (stage, space_id, dataset_id, split, n_projected)
        SELECT TG_ARGV[0], space_id, dataset_id, split, count(*) FROM added GROUP BY space_id, dataset_id, split
        ORDER BY space_id, dataset_id, split
        ON CONFLICT (stage, space_id, dataset_id, split) DO UPDATE SET n_projected = c.n_projected + EXCLUDED.n_projected;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION clipvdb_count_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_ARGV[1] = 'rows' THEN
        UPDATE stage_counts c SET n_rows = c.n_rows - r.n
        FROM (SELECT space_id, dataset_id, split, count(*) AS n FROM removed GROUP BY space_id, dataset_id, split) r
        WHERE c.stage = TG_ARGV[0] AND c.space_id = r.space_id AND c.dataset_id = r.dataset_id AND c.split = r.split;
    ELSE
        UPDATE stage_counts c SET n_projected = c.n_projected - r.n
        FROM (SELECT space_id, dataset_id, split, count(*) AS n FROM removed GROUP BY space_id, dataset_id, split) r
        WHERE c.stage = TG_ARGV[0] AND c.space_id = r.space_id AND c.dataset_id = r.dataset_id AND c.split = r.split;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION clipvdb_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_ARGV[1] = 'rows' THEN
        UPDATE stage_counts SET n_rows = 0, n_projected = 0 WHERE stage = TG_ARGV[0];
    ELSE
        UPDATE stage_counts SET n_projected = 0 WHERE stage = TG_ARGV[0];
    END IF;
    RETURN NULL;
END $$;
"""


def _frozen_views_of(filename: str) -> dict[str, str]:
    """An earlier revision's frozen view copies (the downgrade restores them)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(filename[:-3], Path(__file__).with_name(filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VIEWS


def _views(views: dict[str, str]) -> None:
    for name, text in views.items():
        op.execute(f"DROP VIEW IF EXISTS {name}")
        op.execute(text)


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE stage_counts (
            stage text NOT NULL CHECK (stage IN ('first', 'second', 'third', 'origin')),
            space_id int NOT NULL,
            dataset_id int NOT NULL,
            split text NOT NULL,
            n_rows bigint NOT NULL DEFAULT 0,
            n_projected bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (stage, space_id, dataset_id, split)
        );
        COMMENT ON TABLE stage_counts IS
            'Rows and projected rows per stage, space, dataset and split; kept by triggers, never written by hand';
        """
    )
    op.execute(COUNT_FUNCTIONS)
    for stage in STAGES:
        for table, what in ((f"embeddings_{stage}", "rows"), (f"projections_{stage}", "projected")):
            op.execute(
                f"""
                CREATE TRIGGER {table}_count_added AFTER INSERT ON {table}
                    REFERENCING NEW TABLE AS added FOR EACH STATEMENT
                    EXECUTE FUNCTION clipvdb_count_added('{stage}', '{what}');
                CREATE TRIGGER {table}_count_removed AFTER DELETE ON {table}
                    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT
                    EXECUTE FUNCTION clipvdb_count_removed('{stage}', '{what}');
                CREATE TRIGGER {table}_count_truncated AFTER TRUNCATE ON {table}
                    FOR EACH STATEMENT EXECUTE FUNCTION clipvdb_count_truncated('{stage}', '{what}');
                """
            )
        op.execute(
            f"""
            INSERT INTO stage_counts (stage, space_id, dataset_id, split, n_rows, n_projected)
            SELECT '{stage}', e.space_id, e.dataset_id, e.split, count(*), count(p.image_id)
            FROM embeddings_{stage} e
            LEFT JOIN projections_{stage} p ON p.space_id = e.space_id AND p.image_id = e.image_id
            GROUP BY e.space_id, e.dataset_id, e.split
            """
        )
    op.execute(
        """
        ALTER TABLE predictions
            ADD COLUMN decode_ms double precision,
            ADD COLUMN batch_no int,
            ADD COLUMN batch_size int,
            ADD COLUMN batch_query_ms double precision,
            ADD COLUMN nearest_distance double precision;
        COMMENT ON COLUMN predictions.encode_ms IS
            'ms per image of the encoder pass up to this stage (stages asked together share one pass)';
        COMMENT ON COLUMN predictions.query_ms IS 'batch_query_ms / batch_size: this image''s share of its batch statement';
        COMMENT ON COLUMN predictions.distance IS 'distance to the nearest neighbour of the predicted label';
        COMMENT ON COLUMN predictions.nearest_distance IS 'distance to the nearest neighbour, whatever its label';
        """
    )
    _views(VIEWS)


def downgrade() -> None:
    v2 = _frozen_views_of("0002_report_views.py")
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute(
        """
        ALTER TABLE predictions DROP COLUMN decode_ms, DROP COLUMN batch_no,
            DROP COLUMN batch_size, DROP COLUMN batch_query_ms, DROP COLUMN nearest_distance;
        """
    )
    for stage in STAGES:
        for table in (f"embeddings_{stage}", f"projections_{stage}"):
            for what in ("added", "removed", "truncated"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_count_{what} ON {table}")
    op.execute("DROP FUNCTION clipvdb_count_added(), clipvdb_count_removed(), clipvdb_count_truncated()")
    op.execute("DROP TABLE stage_counts")
    _views({n: v2[n] for n in ("report_runs", "report_timing", "report_distance_histogram")})
