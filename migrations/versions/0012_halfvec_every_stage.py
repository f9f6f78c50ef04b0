"""Store every stage as halfvec, in line: the CLIP stages' rows no longer take a page each.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01

A vector(1024) row is just over 4 KB, so the table and its ivfflat index each held one row per
8 KB page (about 14,400 bytes per image and stage, measured). As halfvec(1024) with STORAGE PLAIN a
row is about 2.1 KB: rows inserted from then on go three to a page, in the table and in the index
(the rewrite here packs the rows already stored a little less tightly, under two to a page). Half precision changed
none of the nearest neighbours at stages second and third (BENCHMARKS.md, item 9).

Every stage table whose column is still `vector(d)` (second and origin, or any stage of a model
that declared another width) becomes `halfvec(d)`, with STORAGE PLAIN; its ANN index is recreated
with the same kind and parameters and the halfvec operator class; its cluster centres follow.
Downgrade restores vector columns (values keep their half precision).
"""

import re

from alembic import op
from sqlalchemy import text

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

STAGES = ("first", "second", "third", "origin")


def _column_type(table: str, column: str) -> str | None:
    row = (
        op.get_bind()
        .execute(
            text(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "JOIN pg_class c ON c.oid = a.attrelid "
                "WHERE c.relname = :t AND a.attname = :c AND c.relnamespace = current_schema()::regnamespace"
            ),
            {"t": table, "c": column},
        )
        .fetchone()
    )
    return row[0] if row else None


def _index_defs(table: str) -> list[tuple[str, str]]:
    """The table's ANN indexes (ivfflat, hnsw) over the embedding column."""
    rows = (
        op.get_bind()
        .execute(
            text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = :t"),
            {"t": table},
        )
        .fetchall()
    )
    return [(r[0], r[1]) for r in rows if re.search(r"USING (ivfflat|hnsw) \(embedding[ )]", r[1])]


def _distributed() -> bool:
    return bool(op.get_bind().execute(text("SELECT clipvdb_distributed()")).scalar())


def _retype(stage: str, old: str, new: str, storage: str) -> None:
    table = f"embeddings_{stage}"
    current = _column_type(table, "embedding")
    if not current or not current.startswith(f"{old}("):
        return
    dim = int(current[current.index("(") + 1 : -1])
    distributed = _distributed()
    if distributed:
        # one connection per worker, so that a later migration step in the same transaction may still
        # create or drop functions (Citus refuses that after a parallel operation on a distributed table)
        op.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
    indexes = _index_defs(table)
    for name, _ in indexes:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    retype = f"ALTER TABLE {table} ALTER COLUMN embedding TYPE {new}({dim}) USING embedding::{new}({dim})"
    if distributed:  # Citus refuses SET STORAGE on a distributed table: its default stays
        op.execute(retype)
    else:  # in the same statement, so that the table's rewrite already keeps the rows in line
        op.execute(f"{retype}, ALTER COLUMN embedding SET STORAGE {storage}")
    centres = f"cluster_centres_{stage}"
    if _column_type(centres, "centre"):
        op.execute(f"ALTER TABLE {centres} ALTER COLUMN centre TYPE {new}({dim}) USING centre::{new}({dim})")
    for _, indexdef in indexes:
        # vector's default operator class (l2) is left out of the definition PostgreSQL gives back
        indexdef = indexdef.replace("(embedding)", f"(embedding {old}_l2_ops)")
        op.execute(re.sub(rf"\(embedding {old}_(\w+_ops)\)", rf"(embedding {new}_\1)", indexdef))


def upgrade() -> None:
    for stage in STAGES:
        _retype(stage, "vector", "halfvec", "PLAIN")


def downgrade() -> None:
    for stage in ("second", "origin"):
        _retype(stage, "halfvec", "vector", "EXTERNAL")
