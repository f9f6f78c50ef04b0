"""Projections in half precision: projections_<stage>.proj becomes halfvec, its index halfvec_l2_ops.

A projected index's probes scan half the pages: stage first (64-d, 25 of 500 lists) answered the
10,000 CIFAR-10 test queries in 7.8 s on one connection against 9.6-10.5 s as vector, with the
same recall@1 (0.982 against 0.981); the candidates are re-ranked on the full vectors anyway.
Rows and the index are kept: the column is cast in place and the index rebuilt with its lists.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STAGES = ("first", "second", "third", "origin")


def _retype(old: str, new: str) -> None:
    for stage in STAGES:
        op.execute(
            f"""
            DO $$
            DECLARE
                def text;
                typmod int;
                typ text;
            BEGIN
                SELECT pg_get_indexdef(i.indexrelid) INTO def
                FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = 'projections_{stage}'::regclass AND c.relname = 'projections_{stage}_ann';
                SELECT atttypmod INTO typmod FROM pg_attribute
                WHERE attrelid = 'projections_{stage}'::regclass AND attname = 'proj';
                typ := CASE WHEN typmod > 0 THEN format('{new}(%s)', typmod) ELSE '{new}' END;
                IF def IS NOT NULL THEN
                    DROP INDEX projections_{stage}_ann;
                END IF;
                EXECUTE format('ALTER TABLE projections_{stage} ALTER COLUMN proj TYPE %s USING proj::%s', typ, typ);
                IF def IS NOT NULL THEN
                    -- a projection is searched by l2 only; pg_get_indexdef leaves a default opclass out
                    EXECUTE regexp_replace(def, '[(]proj( [a-z0-9_]+_ops)?[)]', '(proj {new}_l2_ops)');
                END IF;
            END $$;
            """
        )


def upgrade() -> None:
    _retype("vector", "halfvec")


def downgrade() -> None:
    _retype("halfvec", "vector")
