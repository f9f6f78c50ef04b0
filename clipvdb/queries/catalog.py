"""Datasets, classes, images and embedding spaces, and the row counts per stage."""

from __future__ import annotations

from psycopg import sql

from ..stages import Stage


def counts(stage: Stage) -> sql.Composed:
    """(n_rows, n_projected) of one space, dataset and split: %(space)s, %(dataset)s, %(split)s."""
    return sql.SQL(
        """SELECT coalesce(sum(n_rows), 0)::bigint, coalesce(sum(n_projected), 0)::bigint FROM stage_counts
           WHERE stage = {} AND space_id = %(space)s AND dataset_id = %(dataset)s AND split = %(split)s"""
    ).format(sql.Literal(stage.name))


def learned_count(stage: Stage) -> sql.Composed:
    """Rows of learned_<stage> for one space, dataset and split (a --learned search's coverage check)."""
    return sql.SQL(
        "SELECT count(*) FROM {} WHERE space_id = %(space)s AND dataset_id = %(dataset)s AND split = %(split)s"
    ).format(sql.Identifier(stage.learned_table))


def total_rows(stage: Stage) -> sql.Composed:
    """Rows stored at a stage, all spaces, datasets and splits."""
    return sql.SQL("SELECT coalesce(sum(n_rows), 0)::bigint FROM stage_counts WHERE stage = {}").format(
        sql.Literal(stage.name)
    )


def rows_of_space(stage: Stage) -> sql.Composed:
    """Rows stored in one space (%s) of a stage, all datasets and splits."""
    return sql.SQL(
        "SELECT coalesce(sum(n_rows), 0)::bigint FROM stage_counts WHERE stage = {} AND space_id = %s"
    ).format(sql.Literal(stage.name))


def rows_of_space_in(stage: Stage) -> sql.Composed:
    """Rows stored in one space (%s) of a stage and one dataset (%s), all splits: an index's rows."""
    return sql.SQL(
        "SELECT coalesce(sum(n_rows), 0)::bigint FROM stage_counts "
        "WHERE stage = {} AND space_id = %s AND dataset_id = %s"
    ).format(sql.Literal(stage.name))


# every embedding space holding rows: (id, model, weights, stage, dim, rows), in stage order, then id
STORED_SPACES = """SELECT s.id, s.model, s.weights, s.stage, s.dim, sum(c.n_rows)::bigint
    FROM embedding_spaces s JOIN stage_counts c ON c.space_id = s.id AND c.stage = s.stage
    GROUP BY s.id HAVING sum(c.n_rows) > 0
    ORDER BY array_position(ARRAY['first', 'second', 'third', 'origin'], s.stage), s.id"""


# every (space, dataset) holding rows, the unit an ANN index covers: (space id, dataset id, rows)
STORED_SPACE_DATASETS = """SELECT space_id, dataset_id, sum(n_rows)::bigint FROM stage_counts
    GROUP BY space_id, dataset_id HAVING sum(n_rows) > 0 ORDER BY space_id, dataset_id"""


def space_rows(stage: Stage) -> sql.Composed:
    """(model, weights, rows) per embedding space holding rows at this stage, most first."""
    return sql.SQL(
        """SELECT s.model, s.weights, sum(c.n_rows)::bigint FROM stage_counts c
           JOIN embedding_spaces s ON s.id = c.space_id
           WHERE c.stage = {} AND c.n_rows > 0 GROUP BY s.model, s.weights ORDER BY 3 DESC"""
    ).format(sql.Literal(stage.name))


# ---------------------------------------------------------------- datasets, classes, images, spaces

UPSERT_SPACE = """INSERT INTO embedding_spaces (model, weights, stage, dim) VALUES (%s, %s, %s, %s)
    ON CONFLICT (model, weights, stage) DO UPDATE SET dim = embedding_spaces.dim
    RETURNING id, dim"""
FIND_SPACE = "SELECT id FROM embedding_spaces WHERE model = %s AND weights = %s AND stage = %s"
UPSERT_DATASET = """INSERT INTO datasets (name, source) VALUES (%s, %s)
    ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id"""
DATASET_BY_NAME = "SELECT id FROM datasets WHERE name = %s"
DATASET_NAME = "SELECT name FROM datasets WHERE id = %s"
DATASETS = "SELECT id, name FROM datasets ORDER BY id"
CLASS_NAMES = "SELECT name FROM classes WHERE dataset_id = %s ORDER BY label"
INSERT_CLASS = "INSERT INTO classes (dataset_id, label, name) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
FIND_IMAGES = "SELECT source, id FROM images WHERE dataset_id = %s AND split = %s AND source = ANY(%s)"
ADVISORY_XACT_LOCK = "SELECT pg_advisory_xact_lock(%s)"
ADVISORY_LOCK = "SELECT pg_advisory_lock(%s)"
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock(%s)"
ADVISORY_UNLOCK_ALL = "SELECT pg_advisory_unlock_all()"
SAMPLE_IMAGES = """SELECT i.id, c.name FROM images i JOIN classes c ON c.dataset_id = i.dataset_id AND c.label = i.label
    WHERE i.split <> 'train' ORDER BY i.id LIMIT %s"""
STAGES_WITH_ROWS = "SELECT DISTINCT stage FROM stage_counts WHERE n_rows > 0"
IMAGE_SOURCE = "SELECT d.source, i.split, i.source FROM images i JOIN datasets d ON d.id = i.dataset_id WHERE i.id = %s"


def stored_keys(stage: Stage) -> sql.Composed:
    return sql.SQL(
        """SELECT i.source FROM {} e JOIN images i ON i.id = e.image_id
           WHERE e.space_id = %(space)s AND e.dataset_id = %(dataset)s AND e.split = %(split)s"""
    ).format(sql.Identifier(stage.table))
