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
