"""Store the stages wider than 2,000 dimensions (first: 3,072; third: 2,048) as halfvec, in line.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

A 3,072-d float32 vector is 12 KB, larger than a page, so every row was TOASTed: loads wrote each
vector as seven TOAST chunks plus their index entries, and exact scans detoasted every row. Those
stages were already indexed as halfvec (pgvector indexes `vector` only up to 2,000 dimensions), so
the ANN path already compared half-precision values. As halfvec(3072) a row is 6 KB and, with
STORAGE PLAIN, always stays in the table page. Measured on stage first (BENCHMARKS.md): faster
COPY and exact scans, and the same nearest neighbour for 99.9 % of the CIFAR-10 test queries (the
rest are ties to within 0.1 % of the distance), with the same accuracy.

The ANN index keeps its kind and parameters: its definition is rewritten from an expression over a
cast to the column itself. Downgrade restores vector columns; values keep their half precision.
"""

import re

from alembic import op
from sqlalchemy import text

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

WIDE_STAGES = (("first", 3072), ("third", 2048))


def _index_def(stage: str) -> str | None:
    row = (
        op.get_bind()
        .execute(
            text("SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = :name"),
            {"name": f"embeddings_{stage}_ann"},
        )
        .fetchone()
    )
    return row[0] if row else None


def _retype(stage: str, dim: int, column: str, storage: str, index_rewrite: tuple[str, str]) -> None:
    """Change the embedding column's type and storage, recreating its ANN index with the same kind
    and parameters (its definition rewritten by `index_rewrite`, a regex and its replacement)."""
    indexdef = _index_def(stage)
    op.execute(f"DROP INDEX IF EXISTS embeddings_{stage}_ann")
    op.execute(
        f"ALTER TABLE embeddings_{stage} ALTER COLUMN embedding TYPE {column}({dim}) "
        f"USING embedding::{column}({dim}), ALTER COLUMN embedding SET STORAGE {storage}"
    )
    if indexdef:
        op.execute(re.sub(*index_rewrite, indexdef))


def upgrade() -> None:
    for stage, dim in WIDE_STAGES:
        _retype(stage, dim, "halfvec", "PLAIN", (r"\(\(embedding\)::halfvec\(\d+\)\)", "embedding"))


def downgrade() -> None:
    for stage, dim in WIDE_STAGES:
        _retype(
            stage,
            dim,
            "vector",
            "EXTERNAL",
            (r"\(embedding (halfvec_\w+_ops)\)", rf"(((embedding)::halfvec({dim})) \1)"),
        )
