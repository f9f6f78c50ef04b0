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
