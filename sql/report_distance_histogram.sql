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
