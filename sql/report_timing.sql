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
