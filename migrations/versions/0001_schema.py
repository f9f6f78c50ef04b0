"""Schema: pgvector, datasets, images, embedding spaces, per-stage embeddings, evaluation runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# (stage, dimension): frozen here; the live definitions are in clipvdb/stages.py.
STAGE_DIMS = [("first", 3072), ("second", 1024), ("third", 2048), ("origin", 1024)]


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(
        """
        CREATE TABLE datasets (
            id serial PRIMARY KEY,
            name text NOT NULL UNIQUE,
            source text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE classes (
            dataset_id int NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
            label int NOT NULL CHECK (label >= 0),
            name text NOT NULL,
            PRIMARY KEY (dataset_id, label),
            UNIQUE (dataset_id, name)
        );
        CREATE TABLE images (
            id bigserial PRIMARY KEY,
            dataset_id int NOT NULL,
            split text NOT NULL,
            label int NOT NULL,
            source text NOT NULL,
            sha256 bytea NOT NULL CHECK (length(sha256) = 32),
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (dataset_id, split, source),
            FOREIGN KEY (dataset_id, label) REFERENCES classes(dataset_id, label) ON DELETE CASCADE
        );
        CREATE INDEX images_sha256 ON images (sha256);
        CREATE TABLE embedding_spaces (
            id serial PRIMARY KEY,
            model text NOT NULL,
            weights text NOT NULL,
            stage text NOT NULL CHECK (stage IN ('first', 'second', 'third', 'origin')),
            dim int NOT NULL CHECK (dim > 0),
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (model, weights, stage)
        );
        CREATE TABLE stage_indexes (
            stage text PRIMARY KEY CHECK (stage IN ('first', 'second', 'third', 'origin')),
            kind text NOT NULL CHECK (kind IN ('ivfflat', 'hnsw', 'none')),
            params jsonb NOT NULL DEFAULT '{}',
            built_rows bigint,
            build_seconds double precision,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE stage_indexes IS
            'the ANN index chosen per stage; ingest rebuilds it after loading, keeping the kind';
        COMMENT ON COLUMN embedding_spaces.weights IS
            'weights identity: openai, sha256:<hex> of a checkpoint file, random:seed=<n>, or none';
        """
    )
    for stage, dim in STAGE_DIMS:
        op.execute(
            f"""
            CREATE TABLE embeddings_{stage} (
                space_id int NOT NULL REFERENCES embedding_spaces(id) ON DELETE CASCADE,
                image_id bigint NOT NULL REFERENCES images(id) ON DELETE CASCADE,
                -- copies of the image's dataset and split, so that a neighbour query filters
                -- the one table it orders by, and the planner can use the ANN index
                dataset_id int NOT NULL,
                split text NOT NULL,
                embedding vector({dim}) NOT NULL,
                PRIMARY KEY (space_id, image_id)
            );
            """
        )
    op.execute(
        """
        CREATE TABLE eval_runs (
            id serial PRIMARY KEY,
            dataset_id int NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
            split text NOT NULL,
            stages text[] NOT NULL,
            model text NOT NULL,
            weights text NOT NULL,
            k int NOT NULL CHECK (k >= 1),
            params jsonb NOT NULL DEFAULT '{}',
            status text NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'complete', 'failed')),
            started_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz
        );
        CREATE TABLE predictions (
            run_id int NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE,
            stage text NOT NULL CHECK (stage IN ('first', 'second', 'third', 'origin')),
            image_id bigint NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            predicted int NOT NULL,
            true_label int NOT NULL,
            distance double precision,
            neighbor_id bigint REFERENCES images(id) ON DELETE SET NULL,
            encode_ms double precision NOT NULL CHECK (encode_ms >= 0),
            query_ms double precision NOT NULL CHECK (query_ms >= 0),
            PRIMARY KEY (run_id, stage, image_id)
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS predictions, eval_runs")
    for stage, _ in STAGE_DIMS:
        op.execute(f"DROP TABLE IF EXISTS embeddings_{stage}")
    op.execute("DROP TABLE IF EXISTS stage_indexes, embedding_spaces, images, classes, datasets")
    op.execute("DROP EXTENSION IF EXISTS vector")
