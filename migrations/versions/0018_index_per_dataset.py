"""An ANN index per embedding space and dataset: a search in one dataset reads an index of that
dataset's rows alone.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04

A space's partial index (`WHERE space_id = 7`) held every dataset's rows, and a search in one
dataset filtered the others out after the index scan: with a second dataset as large beside it, a
search read twice the rows for the same answers. Now each (space, dataset) has its own:

- space_indexes and space_projections are keyed by (space_id, dataset_id), each space's record
  copied to every dataset holding rows of the space, with that dataset's rows (an ivfflat's lists
  scaled to them); both cascade when a dataset is deleted;
- each index <table>_ann_<space> is rebuilt per dataset, <table>_ann_<space>_<dataset>, with the
  recorded kind and parameters and `WHERE space_id = S AND dataset_id = D`. The projections stay:
  each dataset's copy of the basis is the one its rows were projected with.

Learned maps stay one per space (a learned space is fitted once and searched per dataset).
"""

import json

from alembic import op
from sqlalchemy import text

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

OPS = {"l2": "l2_ops", "cosine": "cosine_ops", "ip": "ip_ops"}


def _rows(sql: str, **params) -> list:
    return list(op.get_bind().execute(text(sql), params).fetchall())


def _params(value) -> dict:
    return value if isinstance(value, dict) else json.loads(value or "{}")


def _with(kind: str, params: dict) -> str:
    if kind == "ivfflat":
        return f"lists = {int(params.get('lists') or 1)}"
    return f"m = {int(params.get('m') or 16)}, ef_construction = {int(params.get('ef_construction') or 64)}"


def _index(name: str, stage: str, dim: int, kind: str, params: dict, where: str) -> None:
    """An index as indexes.build makes it: on the projections where the record says `project`
    (rows of that width only), else on the stage's vectors cast to the space's width."""
    if params.get("project"):
        width = int(params["project"])
        target, table = f"(proj::halfvec({width})) halfvec_l2_ops", f"projections_{stage}"
        where += f" AND vector_dims(proj) = {width}"
    else:
        target = f"(embedding::halfvec({dim})) halfvec_{OPS[params.get('metric') or 'l2']}"
        table = f"embeddings_{stage}"
    name = f"{table}_ann_{name}"
    op.execute(f"CREATE INDEX {name} ON {table} USING {kind} ({target}) WITH ({_with(kind, params)}) WHERE {where}")


def upgrade() -> None:
    distributed = bool(op.get_bind().execute(text("SELECT clipvdb_distributed()")).scalar())
    if distributed:
        op.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
    op.execute("SET LOCAL maintenance_work_mem = '1GB'")
    records = _rows(
        "SELECT x.space_id, s.stage, s.dim, x.kind, x.params, x.built_rows, x.build_seconds, x.updated_at "
        "FROM space_indexes x JOIN embedding_spaces s ON s.id = x.space_id"
    )
    held = _rows(
        "SELECT space_id, dataset_id, sum(n_rows)::bigint FROM stage_counts "
        "GROUP BY space_id, dataset_id HAVING sum(n_rows) > 0 ORDER BY space_id, dataset_id"
    )
    for name, _table in _rows(
        "SELECT indexname, tablename FROM pg_indexes WHERE schemaname = current_schema() "
        "AND indexname ~ '^(embeddings|projections)_[a-z]+_ann_[0-9]+$'"
    ):
        op.execute(f"DROP INDEX {name}")
    for table in ("space_indexes", "space_projections"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN dataset_id int")
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
    op.execute(
        "INSERT INTO space_projections (space_id, dataset_id, dim, mean, components, fitted_rows, variance_kept, "
        "fitted_at) SELECT p.space_id, c.dataset_id, p.dim, p.mean, p.components, p.fitted_rows, p.variance_kept, "
        "p.fitted_at FROM space_projections p JOIN (SELECT DISTINCT space_id, dataset_id FROM stage_counts "
        "WHERE n_rows > 0) c ON c.space_id = p.space_id WHERE p.dataset_id IS NULL"
    )
    op.execute("DELETE FROM space_projections WHERE dataset_id IS NULL")
    op.execute("DELETE FROM space_indexes")
    for space, stage, dim, kind, params, _built, seconds, updated in records:
        params = _params(params)
        total = sum(n for s, _d, n in held if s == space)
        for _s, dataset, rows in (h for h in held if h[0] == space):
            mine = dict(params)
            if kind == "ivfflat" and params.get("lists") and total:
                mine["lists"] = max(1, round(int(params["lists"]) * rows / total))
            op.get_bind().execute(
                text(
                    "INSERT INTO space_indexes (space_id, dataset_id, kind, params, built_rows, build_seconds, "
                    "updated_at) VALUES (:s, :d, :k, CAST(:p AS jsonb), :r, :t, :u)"
                ),
                {"s": space, "d": dataset, "k": kind, "p": json.dumps(mine), "r": rows, "t": seconds, "u": updated},
            )
            if kind in ("ivfflat", "hnsw"):
                _index(f"{space}_{dataset}", stage, dim, kind, mine, f"space_id = {space} AND dataset_id = {dataset}")
    for table in ("space_indexes", "space_projections"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN dataset_id SET NOT NULL")
        op.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (space_id, dataset_id)")
        op.execute(f"ALTER TABLE {table} ADD FOREIGN KEY (dataset_id) REFERENCES datasets (id) ON DELETE CASCADE")
    op.execute(
        "COMMENT ON TABLE space_indexes IS 'the ANN index chosen per embedding space and dataset "
        "(<table>_ann_<space id>_<dataset id>); ingest rebuilds it after loading'"
    )
    op.execute("COMMENT ON TABLE space_projections IS 'PCA basis of a space''s projected index over one dataset'")


def downgrade() -> None:
    """Back to an index per space: each space keeps its largest dataset's record; a projected index
    keeps its basis only where one dataset holds the space (the others' rows were projected with
    bases of their own), else its projections go and the record falls back to a full-width index
    of the same kind, which the next 'clipvdb index' can project again."""
    distributed = bool(op.get_bind().execute(text("SELECT clipvdb_distributed()")).scalar())
    if distributed:
        op.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
    op.execute("SET LOCAL maintenance_work_mem = '1GB'")
    for name, _table in _rows(
        "SELECT indexname, tablename FROM pg_indexes WHERE schemaname = current_schema() "
        "AND indexname ~ '^(embeddings|projections)_[a-z]+_ann_[0-9]+_[0-9]+$'"
    ):
        op.execute(f"DROP INDEX {name}")
    several = {r[0] for r in _rows("SELECT space_id FROM space_projections GROUP BY space_id HAVING count(*) > 1")}
    for space in several:
        for stage in ("first", "second", "third", "origin"):
            op.execute(f"DELETE FROM projections_{stage} WHERE space_id = {int(space)}")
        op.execute(f"DELETE FROM space_projections WHERE space_id = {int(space)}")
    op.execute(
        "DELETE FROM space_indexes x USING space_indexes y WHERE x.space_id = y.space_id "
        "AND (coalesce(x.built_rows, 0), x.dataset_id) < (coalesce(y.built_rows, 0), y.dataset_id)"
    )
    for table in ("space_indexes", "space_projections"):
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
        op.execute(f"ALTER TABLE {table} DROP COLUMN dataset_id")
        op.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (space_id)")
    records = _rows(
        "SELECT x.space_id, s.stage, s.dim, x.kind, x.params FROM space_indexes x "
        "JOIN embedding_spaces s ON s.id = x.space_id"
    )
    for space, stage, dim, kind, params in records:
        params = _params(params)
        if params.get("project") and space in several:
            params = {k: v for k, v in params.items() if k not in ("project", "variance_kept", "distinct_rows")}
            op.get_bind().execute(
                text("UPDATE space_indexes SET params = CAST(:p AS jsonb) WHERE space_id = :s"),
                {"p": json.dumps(params), "s": space},
            )
        if kind in ("ivfflat", "hnsw"):
            _index(str(space), stage, dim, kind, params, f"space_id = {space}")
