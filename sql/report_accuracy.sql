-- Accuracy by run and stage, complete runs only.
CREATE OR REPLACE VIEW report_accuracy AS
SELECT p.run_id,
       p.stage,
       r.k,
       count(*) AS n,
       count(*) FILTER (WHERE p.predicted = p.true_label) AS correct,
       round(100.0 * count(*) FILTER (WHERE p.predicted = p.true_label) / count(*), 2) AS accuracy_pct
FROM predictions p
JOIN eval_runs r ON r.id = p.run_id
WHERE r.status = 'complete'
GROUP BY p.run_id, p.stage, r.k;
