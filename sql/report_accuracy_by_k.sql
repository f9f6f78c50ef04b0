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
