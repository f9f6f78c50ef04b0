"""Stored linear maps: a projected index's PCA basis and projections, a learned map and its learned space."""

from __future__ import annotations

from psycopg import sql

from ..stages import Stage


def sample_embeddings(stage: Stage, percent: float | None) -> sql.Composed:
    """Every stored embedding of one space (%(space)s) and dataset (%(dataset)s) of the stage, or a
    repeatable Bernoulli sample of `percent`."""
    sample = (
        sql.SQL("")
        if percent is None
        else sql.SQL(" TABLESAMPLE BERNOULLI ({}) REPEATABLE (0)").format(sql.Literal(float(percent)))
    )
    return sql.SQL("SELECT embedding FROM {}{} WHERE space_id = %(space)s AND dataset_id = %(dataset)s").format(
        sql.Identifier(stage.table), sample
    )


def _of(by_dataset: bool) -> sql.SQL:
    return sql.SQL("space_id = %(space)s AND dataset_id = %(dataset)s" if by_dataset else "space_id = %(space)s")


def all_embeddings(stage: Stage, *, by_dataset: bool = False) -> sql.Composed:
    """Every stored row of one space (%(space)s) of the stage; `by_dataset`: of one dataset
    (%(dataset)s) too."""
    return sql.SQL("SELECT space_id, image_id, dataset_id, split, embedding FROM {} WHERE {}").format(
        sql.Identifier(stage.table), _of(by_dataset)
    )


def delete_space_rows(table: str, *, by_dataset: bool = False) -> sql.Composed:
    """A space's rows (%(space)s; `by_dataset`: of one dataset, %(dataset)s) of a table of mapped
    vectors, before they are mapped again."""
    return sql.SQL("DELETE FROM {} WHERE {}").format(sql.Identifier(table), _of(by_dataset))


# the PCA basis of a space's projected index over one dataset:
# (space_id, dataset_id, dim, mean, components, fitted_rows, variance_kept)
SAVE_PROJECTION = """INSERT INTO space_projections
    (space_id, dataset_id, dim, mean, components, fitted_rows, variance_kept, fitted_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, now())
           ON CONFLICT (space_id, dataset_id) DO UPDATE SET dim = EXCLUDED.dim, mean = EXCLUDED.mean,
             components = EXCLUDED.components, fitted_rows = EXCLUDED.fitted_rows,
             variance_kept = EXCLUDED.variance_kept, fitted_at = EXCLUDED.fitted_at"""
LOAD_PROJECTION = """SELECT dim, mean, components, fitted_rows, variance_kept FROM space_projections
    WHERE space_id = %s AND dataset_id = %s"""
DELETE_PROJECTION = "DELETE FROM space_projections WHERE space_id = %s AND dataset_id = %s"


def copy_mapped(table: str, column: str) -> sql.Composed:
    """COPY into a table of mapped vectors (projections_<stage>.proj, learned_<stage>.vec)."""
    return sql.SQL("COPY {} (space_id, image_id, dataset_id, split, {}) FROM STDIN WITH (FORMAT BINARY)").format(
        sql.Identifier(table), sql.Identifier(column)
    )


def insert_mapped(table: str, column: str, column_type: str = "vector") -> sql.Composed:
    """Mapped vectors of newly stored rows: %(ids)s image ids, %(mapped)b their vectors (sent as
    vector[], stored as `column_type`)."""
    return sql.SQL(
        """INSERT INTO {} (space_id, image_id, dataset_id, split, {})
           SELECT %(space)s, u.id, %(dataset)s, %(split)s, u.v::{}
           FROM unnest(%(ids)s::int8[], %(mapped)b::vector[]) AS u(id, v)
           ON CONFLICT (space_id, image_id) DO NOTHING"""
    ).format(sql.Identifier(table), sql.Identifier(column), sql.SQL(column_type))


SAVE_LEARNED_MAP = """INSERT INTO learned_maps
    (space_id, method, dims, mean, matrix, layers, fitted_rows, params, fit_seconds, fitted_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())
    ON CONFLICT (space_id) DO UPDATE SET method = EXCLUDED.method, dims = EXCLUDED.dims, mean = EXCLUDED.mean,
      matrix = EXCLUDED.matrix, layers = EXCLUDED.layers, fitted_rows = EXCLUDED.fitted_rows,
      params = EXCLUDED.params, fit_seconds = EXCLUDED.fit_seconds, fitted_at = EXCLUDED.fitted_at"""
LOAD_LEARNED_MAP = (
    "SELECT method, dims, mean, matrix, layers, fitted_rows, params, fit_seconds FROM learned_maps WHERE space_id = %s"
)
