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
