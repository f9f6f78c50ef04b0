"""Edits to the stored data: choosing images by id, key or pattern; deleting, relabelling; datasets
listed, renamed, dropped."""

from __future__ import annotations

from psycopg import sql

from ..stages import Stage

# %(dataset)s, %(split)s (NULL: every split), and %(keys)s (exact keys) or %(patterns)s (regexes)
_CHOSEN = """SELECT id, split, label, source FROM images
    WHERE dataset_id = %(dataset)s AND (%(split)s::text IS NULL OR split = %(split)s) AND {}
    ORDER BY id"""
IMAGES_BY_KEY = _CHOSEN.format("source = ANY(%(keys)s)")
IMAGES_BY_PATTERN = _CHOSEN.format("source ~ ANY(%(patterns)s)")
IMAGES_BY_ID = _CHOSEN.format("id = ANY(%(ids)s)")
IMAGES_OF_SPLIT = _CHOSEN.format("%(split)s::text IS NOT NULL")
IMAGES_OF_DATASET = "SELECT id FROM images WHERE dataset_id = %s"
DATASET_SOURCE = "SELECT source FROM datasets WHERE id = %s"
SOME_KEYS = "SELECT source FROM images WHERE dataset_id = %s ORDER BY id LIMIT 2"

DELETE_IMAGES = "DELETE FROM images WHERE id = ANY(%s)"
RELABEL = "UPDATE images SET label = %s WHERE id = ANY(%s) AND label <> %s"
# now(), not clock_timestamp(): Citus takes no volatile function in an UPDATE of a distributed or
# reference table; the edit's transaction starts when it does
MARK_CHANGED = "UPDATE datasets SET changed_at = now() WHERE id = %s"
CLASSES = "SELECT label, name FROM classes WHERE dataset_id = %s ORDER BY label"
# complete runs of a dataset that are current now (report_runs.current, without the view's counts)
CURRENT_RUNS = """SELECT count(*) FROM eval_runs r JOIN datasets d ON d.id = r.dataset_id
    WHERE d.id = %s AND r.status = 'complete' AND (d.changed_at IS NULL OR d.changed_at <= r.started_at)"""
RUNS_OF_DATASET = "SELECT count(*) FROM eval_runs WHERE dataset_id = %s"

RENAME_DATASET = "UPDATE datasets SET name = %s WHERE id = %s"
DELETE_RUNS_OF_DATASET = "DELETE FROM eval_runs WHERE dataset_id = %s"
DELETE_PREDICTIONS_OF_DATASET = (
    "DELETE FROM predictions WHERE run_id IN (SELECT id FROM eval_runs WHERE dataset_id = %s)"
)
DELETE_CLUSTERINGS_OF_DATASET = "DELETE FROM clusterings WHERE dataset_id = %s"
DELETE_IMAGES_OF_DATASET = "DELETE FROM images WHERE dataset_id = %s"
DELETE_CLASSES_OF_DATASET = "DELETE FROM classes WHERE dataset_id = %s"
DELETE_DATASET = "DELETE FROM datasets WHERE id = %s"
# every dataset: its folder or archive, when it last changed, images per split, classes, runs (joins
# of grouped counts: Citus plans those across shards, not correlated subqueries)
DATASET_LIST = """SELECT d.id, d.name, d.source, d.created_at, d.changed_at, coalesce(i.images, '{}') AS images,
       coalesce(c.classes, 0) AS classes, coalesce(r.runs, 0) AS runs
    FROM datasets d
    LEFT JOIN (SELECT dataset_id, jsonb_object_agg(split, n ORDER BY split) AS images
               FROM (SELECT dataset_id, split, count(*) AS n FROM images GROUP BY dataset_id, split) s
               GROUP BY dataset_id) i ON i.dataset_id = d.id
    LEFT JOIN (SELECT dataset_id, count(*) AS classes FROM classes GROUP BY dataset_id) c ON c.dataset_id = d.id
    LEFT JOIN (SELECT dataset_id, count(*) AS runs FROM eval_runs GROUP BY dataset_id) r ON r.dataset_id = d.id
    ORDER BY d.id"""


def stored_vectors(stage: Stage) -> sql.Composed:
    """Rows of a stage table (every space) that belong to the images %s (an id array)."""
    return sql.SQL("SELECT count(*) FROM {} WHERE image_id = ANY(%s)").format(sql.Identifier(stage.table))


def stored_vectors_of_dataset(stage: Stage) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {} WHERE dataset_id = %s").format(sql.Identifier(stage.table))


def delete_vectors(stage: Stage) -> sql.Composed:
    """A stage's rows of the images %s, by the image_id index (the images' delete would cascade to
    them one image at a time)."""
    return sql.SQL("DELETE FROM {} WHERE image_id = ANY(%s)").format(sql.Identifier(stage.table))


# ---------------------------------------------------------------- near duplicates (duplicates.py)

DELETE_DUPLICATES = """DELETE FROM duplicate_pairs
    WHERE space_id = %s AND dataset_id = %s AND split = %s AND other_split = %s"""
INSERT_DUPLICATE = """INSERT INTO duplicate_pairs
    (space_id, dataset_id, image_id, split, other_id, other_split, distance, threshold)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"""
DUPLICATE_PAIRS = """SELECT image_id, split, source, class, other_id, other_split, other_source, other_class,
       distance, same_label
    FROM report_duplicates
    WHERE space_id = %s AND dataset_id = %s AND split = %s AND other_split = %s
    ORDER BY distance, image_id, other_id"""
LEAKED_IMAGES = """SELECT DISTINCT image_id FROM duplicate_pairs
    WHERE dataset_id = %s AND split = 'test' AND other_split = 'train'"""
DELETE_DUPLICATES_OF = "DELETE FROM duplicate_pairs WHERE image_id = ANY(%s) OR other_id = ANY(%s)"
# a run's accuracy per stage of one of its models over the images not in %(leaked)s
ACCURACY_WITHOUT = """SELECT stage, count(*) AS n, count(*) FILTER (WHERE predicted = true_label) AS correct
    FROM predictions WHERE run_id = %(run)s AND model_no = %(model_no)s AND NOT (image_id = ANY(%(leaked)s))
    GROUP BY stage"""
DATASET_OF_RUN = "SELECT dataset_id FROM eval_runs WHERE id = %s"
