"""Report views (SQL in sql/, installed by migrations) read back as rows, and the typed reads built
on them for the CLI and the web page: every run, one run whole, what is stored, the server's status.
A view's own rows are dicts (its columns, ready for pandas); everything else is a `Record`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.adapt import Loader
from psycopg.rows import class_row, dict_row

from . import catalog, db, indexes, queries
from .errors import UsageError
from .indexes import IndexInfo
from .records import Record
from .session import Session
from .stages import STAGES

VIEWS: tuple[str, ...] = tuple(queries.REPORT_ORDER)


@dataclass
class Report(Record):
    """One run's rows of the report views asked for; `report["report_accuracy"]` (or
    `report.views[...]`) is that view's rows."""

    run_id: int | None
    views: dict[str, list[dict]] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.views[key] if key in self.views else super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        return key in self.views or super().__contains__(key)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, **self.views}


@dataclass
class RunSummary(Record):
    """A run as report_runs has it, with its accuracy per stage (complete runs only)."""

    run_id: int
    dataset: str
    split: str
    stages: list[str]
    model: str
    weights: str
    k: int
    metric: str
    exact: bool
    index: dict | None
    storage: dict | None
    probes: int | None
    ef_search: int | None
    candidates: int | None
    status: str
    images: int
    started_at: datetime | None
    finished_at: datetime | None
    seconds: float | None
    prompts: str | None = None
    params: dict | None = None
    current: bool = True  # no image of the dataset stored, deleted or relabelled since the run started
    data_changed_at: datetime | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # accuracy_pct per stage


@dataclass
class SlowBatch(Record):
    stage: str
    batch_no: int
    batch_size: int
    batch_query_ms: float
    model: str | None = None  # the model searched (stage first: pixels)


@dataclass
class WrongAnswer(Record):
    """A wrong answer, most confident first: the distance to the neighbor that decided it."""

    stage: str
    image_id: int
    neighbor_id: int | None
    true_class: str
    predicted_class: str | None
    distance: float
    model: str | None = None  # the model searched (stage first: pixels)


@dataclass
class RunDetail(Record):
    """Everything about one run: its summary, every report view's rows for it (`detail[view]` too),
    its slowest query batches and per stage its most confident wrong answers."""

    run: RunSummary
    report: Report
    slowest_batches: list[SlowBatch]
    confident_wrong: list[WrongAnswer]

    def __getitem__(self, key: str) -> Any:
        return self.report[key] if key in self.report.views else super().__getitem__(key)


@dataclass
class ExperimentRow(Record):
    """One setting of a search experiment (report_experiments)."""

    experiment_id: int
    stage: str
    model: str
    weights: str
    size: int
    method: str
    params: dict
    queries: int
    recall_at_1: float
    recall_at_10: float
    mean_ms: float
    p95_ms: float
    queries_per_s: float
    build_s: float | None
    index_bytes: int | None


@dataclass
class ClusterRow(Record):
    """A cluster of a stored clustering (report_cluster_classes) and its members nearest the centre."""

    cluster: int
    size: int
    majority_class: str
    purity: float
    image_ids: list[int]


@dataclass
class Sample(Record):
    id: int
    class_name: str


@dataclass
class DatasetSplit(Record):
    name: str
    split: str
    classes: int
    images: int


@dataclass
class SpaceRows(Record):
    """Rows of one stage, model, dataset and split."""

    stage: str
    model: str
    weights: str
    dim: int
    dataset: str
    split: str
    rows: int
    projected: int


@dataclass
class StageSize(Record):
    """A stored stage's table: rows, bytes with TOAST and indexes, bytes per row, its index."""

    stage: str
    table: str
    rows: int
    bytes: int
    bytes_per_row: float | None
    index: IndexInfo


@dataclass
class StageIndex(Record):
    """A stored stage's index as `db status` shows it: kind, parameters, whether built, and why."""

    kind: str
    params: dict
    exists: bool
    why: str


@dataclass
class SpaceIndex(Record):
    """A stored embedding space's rows of one dataset and their index, as `db status` and `clipvdb
    models` show them (each dataset's rows of a space have an index of their own)."""

    space: int
    model: str
    weights: str
    stage: str
    dim: int
    rows: int
    kind: str
    params: dict
    exists: bool
    size_bytes: int
    why: str
    dataset: str = ""


@dataclass
class Status(Record):
    """Server, pgvector, schema revision, rows per stage, each stored stage's index (its largest
    space's), and every space with its index."""

    server_version: str
    pgvector_version: str | None
    revision: str | None
    head_revision: str
    images: int
    rows_per_stage: dict[str, int]
    citus_workers: int | None
    indexes: dict[str, StageIndex] = field(default_factory=dict)
    spaces: list[SpaceIndex] = field(default_factory=list)
    pgvector_lacks: list[str] = field(default_factory=list)  # db.PGVECTOR_FIXES it lacks
    pgvector_wanted: str = db.PGVECTOR_WANTED  # the release with all of them


@dataclass
class DataOverview(Record):
    """What is stored (the web page's /data): datasets and splits, rows per space, stage sizes."""

    datasets: list[DatasetSplit]
    stage_rows: list[SpaceRows]
    stages: list[StageSize]
    status: Status | None = None
    spaces: list[SpaceIndex] = field(default_factory=list)


class _FloatNumericLoader(Loader):
    """numeric as float: report rows go to JSON and pandas, where Decimal is a nuisance."""

    def load(self, data) -> float:
        return float(bytes(data).decode())


def latest_run(conn: psycopg.Connection) -> int | None:
    row = conn.execute(queries.LATEST_RUN).fetchone()
    return row[0] if row else None


def _read(conn: psycopg.Connection, statement, params=(), kind: type | None = None) -> list:
    """Rows of one statement as `kind` (a Record) or dicts, numeric read as float."""
    with conn.cursor(row_factory=class_row(kind) if kind else dict_row) as cur:
        cur.adapters.register_loader("numeric", _FloatNumericLoader)
        return cur.execute(statement, params).fetchall()


def fetch(conn: psycopg.Connection, view: str, run: int | None) -> list[dict]:
    if view not in VIEWS:
        raise ValueError(view)
    return _read(conn, queries.report_view(view, run is not None), (run,) if run is not None else ())


def report(conn: psycopg.Connection, run: int | None = None, views: tuple[str, ...] = VIEWS) -> Report:
    """The views' rows for one run (default: the latest complete run)."""
    bad = [v for v in views if v not in VIEWS]
    if bad:
        raise UsageError(f"unknown view {bad[0]!r}; choose from {', '.join(VIEWS)}")
    run = run if run is not None else latest_run(conn)
    out = Report(run, {v: fetch(conn, v, run) if run is not None else [] for v in views})
    conn.rollback()
    return out


def rows(conn: psycopg.Connection, statement, params=(), kind: type | None = None) -> list:
    """Rows of one statement of the query layer, as `kind` (a Record) or dicts; the transaction is
    closed after."""
    out = _read(conn, statement, params, kind)
    conn.rollback()
    return out


def several_models(rows: list[dict]) -> bool:
    """Whether a run's report rows cover several models (stage first, pixels whatever the model, is
    not counted): its rows then go by model and stage, not by stage alone."""
    return len({r.get("model") for r in rows if r["stage"] != "first"}) > 1


def row_label(row: dict, several: bool) -> str:
    """What a report row answers: its stage, or (rows of several models) its model and stage."""
    return f"{row['model']} {row['stage']}" if several and row.get("model") else row["stage"]


def runs(conn: psycopg.Connection) -> list[RunSummary]:
    """Every run (report_runs), newest first, each with its accuracy per stage from report_accuracy
    (complete runs only: a running or failed run has none)."""
    found = rows(conn, queries.WEB_RUNS, kind=RunSummary)
    per_run: dict[int, list[dict]] = {}
    for a in rows(conn, queries.WEB_ACCURACY):
        per_run.setdefault(a["run_id"], []).append(a)
    for r in found:
        r.accuracy = _accuracy(per_run.get(r.run_id, []))
    return found


def _accuracy(rows: list[dict]) -> dict[str, float]:
    """A run's accuracy_pct per stage (a run of several models: per "model stage")."""
    several = several_models(rows)
    return {row_label(a, several): a["accuracy_pct"] for a in rows}


def run(conn: psycopg.Connection, run_id: int, limit: int = 10) -> RunDetail | None:
    """Everything about one run, its `limit` slowest query batches and per stage its `limit` most
    confident wrong answers; None when there is no such run."""
    views = report(conn, run_id, VIEWS)
    if not views["report_runs"]:
        return None
    params = {"run": run_id, "limit": limit}
    accuracy = _accuracy(views["report_accuracy"])
    return RunDetail(
        RunSummary(**views["report_runs"][0], accuracy=accuracy),
        views,
        rows(conn, queries.WEB_SLOWEST_BATCHES, params, SlowBatch),
        rows(conn, queries.WEB_CONFIDENT_WRONG, params, WrongAnswer),
    )


def experiments(conn: psycopg.Connection) -> list[ExperimentRow]:
    """Every search experiment's rows (report_experiments), newest experiment first."""
    return rows(conn, queries.WEB_EXPERIMENTS, kind=ExperimentRow)


def cluster_members(conn: psycopg.Connection, clustering_id: int, per_cluster: int = 8) -> list[ClusterRow]:
    """A clustering's clusters, largest first, each with its `per_cluster` members nearest the centre."""
    return rows(conn, queries.WEB_CLUSTER_GRID, {"clustering": clustering_id, "per_cluster": per_cluster}, ClusterRow)


def samples(conn: psycopg.Connection, n: int = 8) -> list[Sample]:
    """The first `n` stored images outside the training split."""
    return [Sample(i, c) for i, c in catalog.sample_images(conn, n)]


def status(session: Session) -> Status:
    """Server, pgvector, schema revision, rows per stage; when the schema is at head, each stored
    stage's index: its kind, parameters and why (the defaults follow the rows: indexes.explain).
    Read without bringing the schema to head."""
    found = Status(**db.status(session.url))
    if found.revision != found.head_revision:
        return found
    with session.connection() as conn:
        found.spaces = spaces(conn)
        conn.rollback()
    for sp in sorted(found.spaces, key=lambda x: -x.rows):
        found.indexes.setdefault(sp.stage, StageIndex(sp.kind, sp.params, sp.exists, sp.why))
    return found


def spaces(conn: psycopg.Connection) -> list[SpaceIndex]:
    """Every embedding space holding rows, in stage order, per dataset with its index and why."""
    out = []
    names = catalog.dataset_names(conn)
    for sp, dataset in catalog.stored_space_datasets(conn):
        idx = indexes.info(conn, sp, dataset)
        why = indexes.explain(idx.kind, idx.params, idx.rows)
        if (due := idx.due()) is not None:
            why += f"; due for a rebuild: {due}"
        out.append(
            SpaceIndex(
                sp.id,
                sp.model,
                sp.weights,
                sp.stage.name,
                sp.stage.dim,
                idx.rows,
                idx.kind,
                idx.params,
                idx.exists,
                idx.size_bytes,
                why,
                names.get(dataset, ""),
            )
        )
    return out


def data_overview(conn: psycopg.Connection) -> DataOverview:
    """What is stored: datasets and splits, rows per stage, model, dataset and split, and per stored
    stage its rows, table bytes with TOAST and indexes, bytes per row and index."""
    datasets = rows(conn, queries.WEB_DATASETS, kind=DatasetSplit)
    stage_rows = rows(conn, queries.WEB_STAGE_ROWS, kind=SpaceRows)
    stages = []
    stored = catalog.stored_space_datasets(conn)
    for name in catalog.stages_with_rows(conn):
        stage = STAGES[name]
        largest, dataset = max(((sp, d) for sp, d in stored if sp.stage.name == name), key=lambda x: x[0].rows)
        info = indexes.info(conn, largest, dataset)
        n = sum(sp.rows for sp, _ in stored if sp.stage.name == name)
        size = int(db.scalar(conn, queries.TOTAL_RELATION_SIZE, (stage.table,)) or 0)
        stages.append(StageSize(name, stage.table, n, size, size / n if n else None, info))
    listed = spaces(conn)
    conn.rollback()
    return DataOverview(datasets, stage_rows, stages, spaces=listed)
