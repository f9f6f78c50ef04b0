"""Stored linear maps: a projected index's PCA basis and projections, a learned map and its learned space."""

from __future__ import annotations

from psycopg import sql

from ..stages import Stage
from .search import PROJECTION_TYPE


def sample_embeddings(stage: Stage, percent: float | None) -> sql.Composed:
    """Every stored embedding of the stage, or a repeatable Bernoulli sample of `percent`."""
    sample = (
        sql.SQL("")
        if percent is None
        else sql.SQL(" TABLESAMPLE BERNOULLI ({}) REPEATABLE (0)").format(sql.Literal(float(percent)))
    )
    return sql.SQL("SELECT embedding FROM {}{}").format(sql.Identifier(stage.table), sample)


def all_embeddings(stage: Stage) -> sql.Composed:
    return sql.SQL("SELECT space_id, image_id, dataset_id, split, embedding FROM {}").format(
        sql.Identifier(stage.table)
    )


# a stage's PCA basis: (stage, dim, mean, components, fitted_rows, variance_kept)
SAVE_PROJECTION = """INSERT INTO stage_projections (stage, dim, mean, components, fitted_rows, variance_kept, fitted_at)
    VALUES (%s, %s, %s, %s, %s, %s, now())
           ON CONFLICT (stage) DO UPDATE SET dim = EXCLUDED.dim, mean = EXCLUDED.mean,
             components = EXCLUDED.components, fitted_rows = EXCLUDED.fitted_rows,
             variance_kept = EXCLUDED.variance_kept, fitted_at = EXCLUDED.fitted_at"""
LOAD_PROJECTION = "SELECT dim, mean, components, fitted_rows, variance_kept FROM stage_projections WHERE stage = %s"
DELETE_PROJECTION = "DELETE FROM stage_projections WHERE stage = %s"


def retype_projection(stage: Stage, dim: int) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ALTER COLUMN proj TYPE {}({})").format(
        sql.Identifier(stage.projection_table), sql.SQL(PROJECTION_TYPE), sql.Literal(dim)
    )


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
    (stage, method, dims, mean, matrix, fitted_rows, params, fit_seconds, fitted_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())
    ON CONFLICT (stage) DO UPDATE SET method = EXCLUDED.method, dims = EXCLUDED.dims, mean = EXCLUDED.mean,
      matrix = EXCLUDED.matrix, fitted_rows = EXCLUDED.fitted_rows, params = EXCLUDED.params,
      fit_seconds = EXCLUDED.fit_seconds, fitted_at = EXCLUDED.fitted_at"""
LOAD_LEARNED_MAP = (
    "SELECT method, dims, mean, matrix, fitted_rows, params, fit_seconds FROM learned_maps WHERE stage = %s"
)


def retype_learned(stage: Stage, dims: int) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ALTER COLUMN vec TYPE vector({})").format(
        sql.Identifier(stage.learned_table), sql.Literal(dims)
    )
