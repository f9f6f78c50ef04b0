-- Search-time experiments: recall and speed per stored-set size and index setting.
CREATE OR REPLACE VIEW report_experiments AS
SELECT x.id AS experiment_id,
       x.stage,
       x.model,
       x.weights,
       r.size,
       r.method,
       r.params,
       r.queries,
       r.recall_at_1,
       r.recall_at_10,
       r.mean_ms,
       r.p95_ms,
       round((1000.0 / nullif(r.mean_ms, 0))::numeric, 1) AS queries_per_s,
       r.build_s,
       r.index_bytes
FROM experiments x
JOIN experiment_results r ON r.experiment_id = x.id;
