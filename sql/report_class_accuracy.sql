-- Accuracy per true class, by run and stage.
CREATE OR REPLACE VIEW report_class_accuracy AS
SELECT p.run_id,
       p.stage,
       p.true_label AS label,
       c.name AS class,
       count(*) AS n,
       count(*) FILTER (WHERE p.predicted = p.true_label) AS correct,
       round(100.0 * count(*) FILTER (WHERE p.predicted = p.true_label) / count(*), 2) AS accuracy_pct,
       CASE WHEN p.stage = 'first' THEN 'pixels' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'model', r.model) END AS model,
       CASE WHEN p.stage = 'first' THEN 'none' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'weights', r.weights) END AS weights,
       p.model_no
FROM predictions p
JOIN eval_runs r ON r.id = p.run_id
JOIN classes c ON c.dataset_id = r.dataset_id AND c.label = p.true_label
WHERE r.status = 'complete'
GROUP BY p.run_id, p.model_no, p.stage, p.true_label, c.name, r.params, r.model, r.weights;
