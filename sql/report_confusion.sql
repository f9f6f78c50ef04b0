-- Confusion matrix in long form: one row per (true class, predicted class) pair that occurred.
CREATE OR REPLACE VIEW report_confusion AS
SELECT p.run_id,
       p.stage,
       p.true_label,
       ct.name AS true_class,
       p.predicted AS predicted_label,
       cp.name AS predicted_class,
       count(*) AS n,
       CASE WHEN p.stage = 'first' THEN 'pixels' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'model', r.model) END AS model,
       CASE WHEN p.stage = 'first' THEN 'none' ELSE coalesce(r.params->'models'->(p.model_no::int)->>'weights', r.weights) END AS weights,
       p.model_no
FROM predictions p
JOIN eval_runs r ON r.id = p.run_id
JOIN classes ct ON ct.dataset_id = r.dataset_id AND ct.label = p.true_label
LEFT JOIN classes cp ON cp.dataset_id = r.dataset_id AND cp.label = p.predicted
WHERE r.status = 'complete'
GROUP BY p.run_id, p.model_no, p.stage, p.true_label, ct.name, p.predicted, cp.name, r.params, r.model, r.weights;
