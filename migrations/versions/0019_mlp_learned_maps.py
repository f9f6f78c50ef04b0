"""Learned maps that are not linear: learned_maps.layers holds what follows an mlp map's first layer.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04

`clipvdb learn --method mlp` fits a two-layer network, learned = relu((x - mean) @ matrix^T + b1)
@ W2^T + b2: mean and matrix keep their meaning (the first layer), and the new column `layers` holds
b1, W2 and b2 as little-endian float32 bytes (NULL for a linear map). No view reads learned_maps.
"""

from alembic import op
from sqlalchemy import text

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE learned_maps ADD COLUMN layers bytea")
    op.execute(
        "COMMENT ON COLUMN learned_maps.layers IS 'an mlp map''s layers after the first: b1, W2, b2 as "
        "little-endian float32 (NULL: a linear map, learned = (embedding - mean) @ matrix^T)'"
    )


def downgrade() -> None:
    n = op.get_bind().execute(text("SELECT count(*) FROM learned_maps WHERE layers IS NOT NULL")).scalar()
    if n:
        raise RuntimeError(
            f"{n} learned map(s) are mlp maps, which revision 0018 cannot hold: refit them with "
            "'clipvdb learn --method nca' (or delete them) before downgrading"
        )
    op.execute("ALTER TABLE learned_maps DROP COLUMN layers")
