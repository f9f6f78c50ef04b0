"""The report views (SQL in sql/) read per run, and the web pages' reads built on them."""

from __future__ import annotations

from psycopg import sql

_STAGE_ORDER = "array_position(ARRAY['first','second','third','origin'], stage)"
_OUTCOME_ORDER = "array_position(ARRAY['all','correct','wrong'], outcome)"
_VOTE_ORDER = "array_position(ARRAY['majority','weighted','dino'], vote)"
# each report view's row order: runs, then each run's models in turn, then stages in forward-pass order
REPORT_ORDER = {
    "report_runs": "run_id",
    "report_accuracy": f"run_id, model_no, {_STAGE_ORDER}",
    "report_timing": f"run_id, model_no, {_STAGE_ORDER}",
    "report_confusion": f"run_id, model_no, {_STAGE_ORDER}, true_label, predicted_label",
    "report_class_accuracy": f"run_id, model_no, {_STAGE_ORDER}, label",
    "report_distance_histogram": f"run_id, model_no, {_STAGE_ORDER}, bin",
    "report_distance_summary": f"run_id, model_no, {_STAGE_ORDER}, {_OUTCOME_ORDER}",
    "report_accuracy_by_k": f"run_id, model_no, {_STAGE_ORDER}, k, {_VOTE_ORDER}",
}


def report_view(view: str, with_run: bool) -> sql.Composed:
    """SELECT * from a report view in its order, for one run (%s) or every run."""
    where = sql.SQL(" WHERE run_id = %s") if with_run else sql.SQL("")
    return sql.SQL("SELECT * FROM {}{} ORDER BY {}").format(sql.Identifier(view), where, sql.SQL(REPORT_ORDER[view]))


# ---------------------------------------------------------------- web pages (clipvdb serve)

# every run (report_runs), newest first; numbers as float8 for the page
WEB_RUNS = """SELECT run_id, dataset, split, stages, model, weights, k, metric, exact, index, storage, probes,
       ef_search, candidates, status, images, started_at, finished_at, seconds::float8 AS seconds, current,
       data_changed_at
    FROM report_runs ORDER BY run_id DESC"""
# accuracy per run and stage over every run (report_accuracy), in forward-pass order
WEB_ACCURACY = f"""SELECT run_id, stage, k, n, correct, accuracy_pct::float8 AS accuracy_pct, space, model
    FROM report_accuracy ORDER BY run_id, {_STAGE_ORDER}"""
# a prediction's model (a run of several models: by its model_no; stage first is pixels), as the views name it
_MODEL = """CASE WHEN p.stage = 'first' THEN 'pixels'
                 ELSE coalesce(r.params->'models'->(p.model_no::int)->>'model', r.model) END"""
# one run's slowest query batches: %(run)s, %(limit)s. A batch is one statement, repeated on each
# of its images' prediction rows; only complete runs, as the report views.
WEB_SLOWEST_BATCHES = f"""SELECT b.stage, b.batch_no, b.batch_size, b.batch_query_ms, b.model
    FROM (SELECT DISTINCT p.stage, p.batch_no, p.batch_size, p.batch_query_ms, {_MODEL} AS model
          FROM predictions p JOIN eval_runs r ON r.id = p.run_id
          WHERE p.run_id = %(run)s AND r.status = 'complete' AND p.batch_query_ms IS NOT NULL) b
    ORDER BY b.batch_query_ms DESC, b.stage, b.batch_no LIMIT %(limit)s"""
# one run's most confident wrong answers per stage: the smallest distance to the neighbor that
# decided the (wrong) label; %(run)s, %(limit)s per stage
WEB_CONFIDENT_WRONG = f"""SELECT stage, image_id, neighbor_id, true_class, predicted_class, distance, model
    FROM (SELECT p.stage, p.image_id, p.neighbor_id, ct.name AS true_class, cp.name AS predicted_class,
                 p.distance, {_MODEL} AS model,
                 row_number() OVER (PARTITION BY p.model_no, p.stage ORDER BY p.distance, p.image_id) AS rank
          FROM predictions p
          JOIN eval_runs r ON r.id = p.run_id
          JOIN classes ct ON ct.dataset_id = r.dataset_id AND ct.label = p.true_label
          LEFT JOIN classes cp ON cp.dataset_id = r.dataset_id AND cp.label = p.predicted
          WHERE p.run_id = %(run)s AND r.status = 'complete' AND p.predicted <> p.true_label
            AND p.distance IS NOT NULL) w
    WHERE rank <= %(limit)s ORDER BY {_STAGE_ORDER}, rank"""
# search experiments (report_experiments), newest first, then by size and setting
WEB_EXPERIMENTS = """SELECT experiment_id, stage, model, weights, size, method, params, queries,
       recall_at_1::float8 AS recall_at_1, recall_at_10::float8 AS recall_at_10, mean_ms::float8 AS mean_ms,
       p95_ms::float8 AS p95_ms, queries_per_s::float8 AS queries_per_s, build_s::float8 AS build_s, index_bytes
    FROM report_experiments ORDER BY experiment_id DESC, size, method, params::text"""
# a clustering's clusters (report_cluster_classes), largest first, with the %s members nearest the
# centre of each, nearest first: (cluster, size, majority_class, purity, image_ids[])
WEB_CLUSTER_GRID = """SELECT c.cluster, c.size, c.majority_class, c.purity::float8,
       array(SELECT m.image_id FROM cluster_members m
             WHERE m.clustering_id = c.clustering_id AND m.cluster = c.cluster
             ORDER BY m.distance, m.image_id LIMIT %(per_cluster)s) AS image_ids
    FROM report_cluster_classes c
    WHERE c.clustering_id = %(clustering)s AND c.cluster >= 0
    ORDER BY c.size DESC, c.cluster"""
# datasets and their splits: (dataset, split, classes, images)
WEB_DATASETS = """SELECT d.name, i.split, (SELECT count(*) FROM classes c WHERE c.dataset_id = d.id) AS classes,
       count(*) AS images
    FROM images i JOIN datasets d ON d.id = i.dataset_id
    GROUP BY d.id, d.name, i.split ORDER BY d.name, i.split"""
# rows per stage, model, dataset and split (stage_counts with embedding_spaces): no count(*) scan
WEB_STAGE_ROWS = """SELECT c.stage, s.model, s.weights, s.dim, d.name AS dataset, c.split,
       sum(c.n_rows)::bigint AS rows, sum(c.n_projected)::bigint AS projected
    FROM stage_counts c
    JOIN embedding_spaces s ON s.id = c.space_id
    JOIN datasets d ON d.id = c.dataset_id
    WHERE c.n_rows > 0
    GROUP BY c.stage, s.model, s.weights, s.dim, d.name, c.split
    ORDER BY array_position(ARRAY['first','second','third','origin'], c.stage), s.model, s.weights, d.name, c.split"""
# near-duplicate pairs (report_duplicates): each scan's counts, and the nearest %s pairs
WEB_DUPLICATE_SCANS = """SELECT dataset, model, stage, split, other_split, count(*) AS pairs,
       count(DISTINCT image_id) AS images, count(*) FILTER (WHERE NOT same_label) AS different_label,
       max(threshold)::float8 AS threshold, max(found_at) AS found_at
    FROM report_duplicates GROUP BY dataset, model, stage, split, other_split
    ORDER BY dataset, model, stage, split, other_split"""
WEB_DUPLICATES = """SELECT dataset, model, stage, image_id, split, source, class, other_id, other_split,
       other_source, other_class, distance::float8 AS distance, same_label
    FROM report_duplicates ORDER BY distance, image_id, other_id LIMIT %s"""
