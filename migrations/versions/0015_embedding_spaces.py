"""Every embedding space in one database: vectors of any width per stage table, an index per space.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04

A stage table held the vectors of one width (the first model stored there set it), so a database
held one encoder per stage. Now the vector columns carry no width (`halfvec`, pgvector's way to keep
several dimensions in one column); each embedding space (model x weights x stage) has its own
records and its own partial expression index, `USING hnsw ((embedding::halfvec(80))
halfvec_l2_ops) WHERE space_id = 7`, so a search reads only its own space's index:

- stage_indexes (one per stage) becomes space_indexes (one per space), each stage record copied to
  every space of its stage, with that space's rows;
- stage_projections becomes space_projections and learned_maps is keyed by space, in the same way;
- every ANN index (embeddings_<stage>_ann, projections_<stage>_ann, learned_<stage>_ann) is
  rebuilt per space with the recorded kind and parameters: <table>_ann_<space id>.

Nothing else moves: the rows stay where they are (dropping a column's width rewrites nothing),
with their storage kept in line. Downgrade needs every stage to hold one width again.
"""

import importlib.util
import json
from pathlib import Path

from alembic import op
from sqlalchemy import text

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

STAGES = ("first", "second", "third", "origin")
# table, column, type without width, opclass prefix
COLUMNS = {
    "embeddings": ("embedding", "halfvec"),
    "projections": ("proj", "halfvec"),
    "learned": ("vec", "vector"),
    "cluster_centres": ("centre", "halfvec"),
}
OPS = {"l2": "l2_ops", "cosine": "cosine_ops", "ip": "ip_ops"}
RENAMED = {"'stage_indexes'": "'space_indexes'", "'stage_projections'": "'space_projections'"}


def _functions_of_0013() -> str:
    spec = importlib.util.spec_from_file_location("m0013", Path(__file__).with_name("0013_citus_knn_one_statement.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._functions()


def _functions() -> str:
    """0013's functions, clipvdb_distribute() placing the per-space tables by their new names."""
    out = _functions_of_0013()
    for old, new in RENAMED.items():
        assert old in out
        out = out.replace(old, new)
    return out


def _rows(sql: str, **params) -> list:
    return list(op.get_bind().execute(text(sql), params).fetchall())


def _distributed() -> bool:
    return bool(op.get_bind().execute(text("SELECT clipvdb_distributed()")).scalar())


def _with(kind: str, params: dict) -> str:
    if kind == "ivfflat":
        return f"lists = {int(params.get('lists') or 1)}"
    return f"m = {int(params.get('m') or 16)}, ef_construction = {int(params.get('ef_construction') or 64)}"


SPACE_INDEXES = """space_id int PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('ivfflat', 'hnsw', 'none')),
    params jsonb NOT NULL DEFAULT '{}',
    built_rows bigint,
    build_seconds double precision,
    updated_at timestamptz NOT NULL DEFAULT now()"""
INDEXES_FROM_STAGES = """SELECT s.id, x.kind, x.params,
       (SELECT coalesce(sum(c.n_rows), 0) FROM stage_counts c WHERE c.stage = s.stage AND c.space_id = s.id),
       x.build_seconds, x.updated_at
FROM stage_indexes x JOIN embedding_spaces s ON s.stage = x.stage"""
SPACE_PROJECTIONS = """space_id int PRIMARY KEY,
    dim int NOT NULL CHECK (dim >= 1),
    mean bytea NOT NULL,
    components bytea NOT NULL,
    fitted_rows bigint NOT NULL,
    variance_kept double precision NOT NULL,
    fitted_at timestamptz NOT NULL DEFAULT now()"""
PROJECTIONS_FROM_STAGES = """SELECT s.id, p.dim, p.mean, p.components, p.fitted_rows, p.variance_kept, p.fitted_at
FROM stage_projections p JOIN embedding_spaces s ON s.stage = p.stage"""
SPACE_LEARNED = """space_id int PRIMARY KEY,
    method text NOT NULL,
    dims int NOT NULL,
    mean bytea NOT NULL,
    matrix bytea NOT NULL,
    fitted_rows bigint NOT NULL,
    params jsonb NOT NULL DEFAULT '{}',
    fit_seconds double precision,
    fitted_at timestamptz NOT NULL DEFAULT now()"""
LEARNED_FROM_STAGES = """SELECT s.id, m.method, m.dims, m.mean, m.matrix, m.fitted_rows, m.params, m.fit_seconds, m.fitted_at
FROM learned_maps m JOIN embedding_spaces s ON s.stage = m.stage"""
STAGE_KEY = "stage text PRIMARY KEY CHECK (stage IN ('first', 'second', 'third', 'origin'))"
STAGE_INDEXES = SPACE_INDEXES.replace("space_id int PRIMARY KEY", STAGE_KEY)
STAGE_PROJECTIONS = SPACE_PROJECTIONS.replace("space_id int PRIMARY KEY", STAGE_KEY)
STAGE_LEARNED = SPACE_LEARNED.replace("space_id int PRIMARY KEY", STAGE_KEY)
# a stage's record back from its largest space's
INDEXES_FROM_SPACES = """SELECT DISTINCT ON (s.stage) s.stage, x.kind, x.params, x.built_rows, x.build_seconds,
       x.updated_at
FROM space_indexes x JOIN embedding_spaces s ON s.id = x.space_id ORDER BY s.stage, x.built_rows DESC"""


def _move(new: str, columns: str, old: str, select: str | None, distributed: bool, key: str = "") -> None:
    """A new table in place of `old`, filled by `select` (None: left empty), one statement at a
    time: on Citus the new table becomes a reference table before it is filled and before its
    foreign key to embedding_spaces (another reference table) is added."""
    op.execute(f"CREATE TABLE {new} ({columns})")
    if distributed:
        op.execute(f"SELECT create_reference_table('{new}')")
    if select:
        op.execute(f"INSERT INTO {new} {select}")
    if key:
        op.execute(f"ALTER TABLE {new} ADD FOREIGN KEY ({key}) REFERENCES embedding_spaces (id) ON DELETE CASCADE")
    op.execute(f"DROP TABLE {old}")


def _space_index(table: str, column: str, ctype: str, dim: int, metric: str, kind: str, params: dict, space: int):
    """A space's partial index; on a table of mapped vectors (a refit rewrites them at another
    width) also over the rows of its width alone."""
    width = "" if column == "embedding" else f" AND vector_dims({column}) = {dim}"
    op.execute(
        f"CREATE INDEX {table}_ann_{space} ON {table} USING {kind} "
        f"(({column}::{ctype}({dim})) {ctype}_{OPS[metric]}) WITH ({_with(kind, params)}) "
        f"WHERE space_id = {space}{width}"
    )


def _retype(distributed: bool, width: dict[str, int] | None) -> None:
    """The vector columns without width (upgrade), or with each stage's one width (downgrade)."""
    for stage in STAGES:
        for prefix, (column, ctype) in COLUMNS.items():
            table = f"{prefix}_{stage}"
            if width is None:
                new = ctype
            elif prefix == "embeddings" or prefix == "cluster_centres":
                new = f"{ctype}({width[stage]})"
            else:
                continue  # projections and learned maps are typed again when next fitted
            retype = f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {new}"
            # a type change resets a column's storage to the type's default: embeddings stay in line
            # (Citus refuses SET STORAGE on a distributed table: its default stays)
            if prefix == "embeddings" and not distributed:
                retype += f", ALTER COLUMN {column} SET STORAGE PLAIN"
            op.execute(retype)


def upgrade() -> None:
    distributed = _distributed()
    if distributed:
        # one connection per worker, so that creating reference tables later in this transaction works
        op.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
    op.execute("SET LOCAL maintenance_work_mem = '1GB'")
    for stage in STAGES:
        for prefix in ("embeddings", "projections", "learned"):
            op.execute(f"DROP INDEX IF EXISTS {prefix}_{stage}_ann")
    _retype(distributed, None)
    _move("space_indexes", SPACE_INDEXES, "stage_indexes", INDEXES_FROM_STAGES, distributed, key="space_id")
    _move(
        "space_projections",
        SPACE_PROJECTIONS,
        "stage_projections",
        PROJECTIONS_FROM_STAGES,
        distributed,
        key="space_id",
    )
    _move("space_learned_maps", SPACE_LEARNED, "learned_maps", LEARNED_FROM_STAGES, distributed, key="space_id")
    op.execute("ALTER TABLE space_learned_maps RENAME TO learned_maps")
    op.execute(
        "COMMENT ON TABLE space_indexes IS 'the ANN index chosen per embedding space (<table>_ann_<space id>); "
        "ingest rebuilds it after loading'"
    )
    op.execute("COMMENT ON TABLE space_projections IS 'PCA basis of a space''s projected index'")
    op.execute("COMMENT ON TABLE learned_maps IS 'a space''s learned linear map (clipvdb learn)'")
    op.execute(_functions())
    spaces = _rows(
        "SELECT s.id, s.stage, s.dim, x.kind, x.params FROM embedding_spaces s JOIN space_indexes x ON x.space_id = s.id"
    )
    for space, stage, dim, kind, params in spaces:
        params = params if isinstance(params, dict) else json.loads(params or "{}")
        if kind not in ("ivfflat", "hnsw"):
            continue
        if params.get("project"):
            _space_index(f"projections_{stage}", "proj", "halfvec", int(params["project"]), "l2", kind, params, space)
        else:
            metric = params.get("metric") or "l2"
            _space_index(f"embeddings_{stage}", "embedding", "halfvec", dim, metric, kind, params, space)
    for space, stage, dims, params in _rows(
        "SELECT s.id, s.stage, m.dims, m.params FROM learned_maps m JOIN embedding_spaces s ON s.id = m.space_id"
    ):
        params = params if isinstance(params, dict) else json.loads(params or "{}")
        _space_index(f"learned_{stage}", "vec", "vector", dims, "l2", "ivfflat", params, space)


def downgrade() -> None:
    distributed = _distributed()
    if distributed:
        op.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
    width: dict[str, int] = {}
    for stage in STAGES:
        widths = [
            r[0]
            for r in _rows(
                "SELECT DISTINCT s.dim FROM embedding_spaces s JOIN stage_counts c ON c.space_id = s.id "
                "WHERE s.stage = :stage AND c.n_rows > 0",
                stage=stage,
            )
        ]
        if len(widths) > 1:
            raise RuntimeError(
                f"stage {stage} holds vectors of {len(widths)} widths ({sorted(widths)}); a database before "
                "revision 0015 holds one: delete all but one model's vectors before downgrading"
            )
        width[stage] = widths[0] if widths else {"first": 3072, "second": 1024, "third": 2048, "origin": 1024}[stage]
    for name, _table in _rows(
        "SELECT indexname, tablename FROM pg_indexes WHERE schemaname = current_schema() AND indexname ~ '_ann_[0-9]+$'"
    ):
        op.execute(f"DROP INDEX IF EXISTS {name}")
    _retype(distributed, width)
    _move("stage_indexes", STAGE_INDEXES, "space_indexes", INDEXES_FROM_SPACES, distributed)
    _move("stage_projections", STAGE_PROJECTIONS, "space_projections", None, distributed)
    _move("stage_learned_maps", STAGE_LEARNED, "learned_maps", None, distributed)
    op.execute("ALTER TABLE stage_learned_maps RENAME TO learned_maps")
    op.execute(_functions_of_0013())
    # projections and learned maps are refitted by the next 'clipvdb index' / 'clipvdb learn'; a
    # projected index's record goes with them, so that searches use the full vectors meanwhile
    op.execute("UPDATE stage_indexes SET kind = 'none', params = '{}' WHERE params ? 'project'")
    for stage in STAGES:
        op.execute(f"TRUNCATE projections_{stage}, learned_{stage}")
    for stage, kind, params in _rows("SELECT stage, kind, params FROM stage_indexes WHERE kind <> 'none'"):
        params = params if isinstance(params, dict) else json.loads(params or "{}")
        metric = params.get("metric") or "l2"
        op.execute(
            f"CREATE INDEX embeddings_{stage}_ann ON embeddings_{stage} USING {kind} "
            f"(embedding halfvec_{OPS[metric]}) WITH ({_with(kind, params)})"
        )
