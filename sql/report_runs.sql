-- One row per evaluation run: what was asked and how far it got.
CREATE OR REPLACE VIEW report_runs AS
SELECT r.id AS run_id,
       d.name AS dataset,
       r.split,
       r.stages,
       r.model,
       r.weights,
       r.k,
       r.params,
       r.status,
       (SELECT count(DISTINCT p.image_id) FROM predictions p WHERE p.run_id = r.id) AS images,
       r.started_at,
       r.finished_at,
       extract(epoch FROM r.finished_at - r.started_at) AS seconds
FROM eval_runs r
JOIN datasets d ON d.id = r.dataset_id;
