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
