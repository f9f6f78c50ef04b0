"""Projected indexes: a PCA basis per stage, and per-stage tables of projected vectors.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

`clipvdb index --project D` fits a principal-component basis to a stage's stored vectors, stores
every vector's D-dimensional projection in projections_<stage>, and builds the ANN index there.
A neighbour query takes a few dozen candidates through that small index and orders them by the
exact distance on the full embedding (BENCHMARKS.md, item 1: the stage-first goal is met this way).
A projection row exists only with its embedding row (composite foreign key, cascading deletes).
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STAGES = ("first", "second", "third", "origin")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE stage_projections (
            stage text PRIMARY KEY CHECK (stage IN ('first', 'second', 'third', 'origin')),
            dim int NOT NULL CHECK (dim >= 1),
            mean bytea NOT NULL,
            components bytea NOT NULL,
            fitted_rows bigint NOT NULL,
            variance_kept double precision NOT NULL,
            fitted_at timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE stage_projections IS
            'PCA basis of a projected index: projection = (embedding - mean) @ components^T';
        COMMENT ON COLUMN stage_projections.mean IS 'float32 little-endian, one value per stage dimension';
        COMMENT ON COLUMN stage_projections.components IS
            'float32 little-endian, dim rows of the stage''s width, strongest component first';
        """
    )
    for stage in STAGES:
        op.execute(
            f"""
            CREATE TABLE projections_{stage} (
                space_id int NOT NULL,
                image_id bigint NOT NULL,
                dataset_id int NOT NULL,
                split text NOT NULL,
                -- the width is set when a projection is fitted (ALTER ... TYPE vector(D))
                proj vector NOT NULL,
                PRIMARY KEY (space_id, image_id),
                FOREIGN KEY (space_id, image_id) REFERENCES embeddings_{stage} (space_id, image_id)
                    ON DELETE CASCADE
            );
            """
        )


def downgrade() -> None:
    for stage in STAGES:
        op.execute(f"DROP TABLE IF EXISTS projections_{stage}")
    op.execute("DROP TABLE IF EXISTS stage_projections")
