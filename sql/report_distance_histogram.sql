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
