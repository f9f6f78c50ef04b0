-- One row per evaluation run: what was asked, everything that changes an answer, how far it got.
-- current: no image of the run's dataset was stored, deleted or relabelled since the run started
-- (datasets.changed_at, set by ingest, delete, relabel); a run that is not current answered from a
-- stored set that has changed since.
CREATE OR REPLACE VIEW report_runs AS
SELECT r.id AS run_id,
       d.name AS dataset,
       r.split,
       r.stages,
       r.model,
       r.weights,
       r.k,
       coalesce(r.params->>'metric', 'l2') AS metric,
       coalesce((r.params->>'exact')::boolean, false) AS exact,
       r.params->'index' AS index,
       r.params->'storage' AS storage,
       (r.params->>'probes')::int AS probes,
       (r.params->>'ef_search')::int AS ef_search,
       (r.params->>'candidates')::int AS candidates,
       r.params->>'prompts' AS prompts,
       r.params,
       r.status,
       coalesce(n.images, 0) AS images,
       r.started_at,
       r.finished_at,
       extract(epoch FROM r.finished_at - r.started_at) AS seconds,
       d.changed_at AS data_changed_at,
       d.changed_at IS NULL OR d.changed_at <= r.started_at AS current
FROM eval_runs r
JOIN datasets d ON d.id = r.dataset_id
-- a join, not a correlated subquery: Citus plans joins across shards, not correlated subqueries
LEFT JOIN (SELECT run_id, count(DISTINCT image_id) AS images FROM predictions GROUP BY run_id) n ON n.run_id = r.id;
