"""Loading: binary COPY into a stage table, through a staging table, the image rows."""

from __future__ import annotations

from psycopg import sql

from ..stages import Stage


def copy_stage(stage: Stage) -> sql.Composed:
    return sql.SQL("COPY {} (space_id, image_id, dataset_id, split, embedding) FROM STDIN WITH (FORMAT BINARY)").format(
        sql.Identifier(stage.table)
    )


def staging_name(stage: Stage) -> str:
    return f"staging_{stage.name}"


def staging_table(stage: Stage) -> sql.Identifier:
    return sql.Identifier(staging_name(stage))


def create_staging(stage: Stage) -> sql.Composed:
    # no width: one connection may stage the vectors of several models (spaces) at this stage
    return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (image_id bigint, embedding {}) ON COMMIT DELETE ROWS").format(
        staging_table(stage), sql.SQL(stage.column_type)
    )


def copy_staging(stage: Stage) -> sql.Composed:
    return sql.SQL("COPY {} (image_id, embedding) FROM STDIN WITH (FORMAT BINARY)").format(staging_table(stage))


def insert_from_staging(stage: Stage) -> sql.Composed:
    return sql.SQL(
        """INSERT INTO {table} (space_id, image_id, dataset_id, split, embedding)
           SELECT %s, s.image_id, i.dataset_id, i.split, s.embedding
           FROM {staging} s JOIN images i ON i.id = s.image_id ORDER BY s.image_id
           ON CONFLICT (space_id, image_id) DO NOTHING"""
    ).format(table=sql.Identifier(stage.table), staging=staging_table(stage))


def insert_images(*, on_conflict: bool) -> sql.Composed:
    """New image rows: (dataset, split, keys[], labels[], sha256s[]). `on_conflict` skips rows a
    concurrent ingest stored first (plain PostgreSQL; Citus has no unique key to name)."""
    return sql.SQL(
        """INSERT INTO images (dataset_id, split, label, source, sha256)
           SELECT %s, %s, l, k, h FROM unnest(%s::text[], %s::int[], %s::bytea[]) AS t(k, l, h)
           ORDER BY k{}"""
    ).format(sql.SQL(" ON CONFLICT (dataset_id, split, source) DO NOTHING" if on_conflict else ""))


def truncate(table: str) -> sql.Composed:
    return sql.SQL("TRUNCATE {}").format(sql.Identifier(table))


def analyze(table: str) -> sql.Composed:
    return sql.SQL("ANALYZE {}").format(sql.Identifier(table))


def vacuum(table: str) -> sql.Composed:
    return sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table))
