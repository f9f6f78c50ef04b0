"""`clipvdb.Store`: the object at the centre of the library. The CLI, the web page, the demo and the
bench all go through it.

    import clipvdb
    store = clipvdb.Store()                                   # the embedded server; Store(url) another
    store.ingest("cifar10/", stages="first", split="train")   # IngestResult
    preds = store.classify(["cat.png", pil_image], stage="first")   # list[Prediction]
    run = store.evaluate("cifar10/", stage="first", split="test", limit=1000)   # EvalRun
    rows = store.report("report_accuracy", run=run.run_id)    # list[dict], ready for pandas

A Store is a thin facade over its `Session` (session.py), which every job runs on: the connection
pool, the schema brought to head on first use (never down), the encoder loaded only when a CLIP
stage needs it, the cached datasets and set-up searchers. A job's options are one object
(options.py); the Store also takes its fields as keywords.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from . import (
    catalog,
    clusters,
    config,
    db,
    embedded,
    experiment,
    indexes,
    ingest,
    nodes,
    queries,
    reindex,
    reports,
    retrieval,
    storage,
    zeroshot,
)
from . import evaluate as evaluation
from . import learn as learning
from .clusters import Clustering
from .encoder import CHECKPOINT_SUFFIX, Encoder, models_dir
from .errors import ImageError, StageError, UsageError
from .evaluate import EvalRun
from .experiment import ExperimentResult
from .images import ImageInput, as_image, png_bytes
from .indexes import IndexInfo
from .ingest import IngestResult, LoadResult
from .knn import KnnSearcher, SearchSettings
from .learned import LearnedMap
from .options import (
    ClusterOptions,
    EvaluateOptions,
    IndexOptions,
    IngestOptions,
    LearnOptions,
    TrainOptions,
    Watch,
)
from .pipeline import embed, encode_items, query_items
from .predict import Prediction, as_predictions, predict_batch
from .retrieval import Grid, Hit
from .session import Dataset, Session, StagesArg, parse
from .sources import Source, open_source
from .stages import STAGE_NAMES, STAGES, Stage

if TYPE_CHECKING:
    from .training import TrainResult

ProgressFn = Callable[[int, int], None]


def _source(data: str | Path | Source) -> Source:
    return data if isinstance(data, Source) else open_source(str(data))


class Store:
    """A clipvdb database: ingest, classify, evaluate, report, search. The jobs run on its `session`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        home: Path | str | None = None,
        model: str = config.DEFAULT_MODEL,
        pretrained: str | None = None,
        device: str = config.DEFAULT_DEVICE,
        encoder: Encoder | None = None,
        pool_size: int = config.DEFAULT_POOL_SIZE,
        migrate: bool = True,
        announce: Callable[[str], None] | None = None,
    ):
        self.session = Session(
            url,
            home=home,
            model=model,
            pretrained=pretrained,
            device=device,
            encoder=encoder,
            pool_size=pool_size,
            migrate=migrate,
            announce=announce,
        )

    @property
    def home(self) -> Path | None:
        return self.session.home

    @property
    def home_dir(self) -> Path:
        """This store's home: given, else CLIPVDB_HOME, else the user data directory."""
        return self.session.home_dir

    @property
    def model(self) -> str:
        return self.session.model

    @property
    def pretrained(self) -> str | None:
        return self.session.pretrained

    @property
    def device(self) -> str:
        return self.session.device

    @property
    def url(self) -> str:
        """The database URL: given, else CLIPVDB_DATABASE_URL, else the embedded server (started)."""
        return self.session.url

    def connection(self) -> contextlib.AbstractContextManager[psycopg.Connection]:
        """A pooled connection with pgvector registered; rolled back when returned with work open."""
        return self.session.connection()

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ model, datasets, searchers

    @property
    def encoder(self) -> Encoder:
        """The encoder (loaded on first use: stage first never needs it)."""
        return self.session.encoder

    @encoder.setter
    def encoder(self, value: Encoder) -> None:
        self.session.encoder = value

    def encoder_for(self, stages: list[Stage]) -> Encoder | None:
        return self.session.encoder_for(stages)

    def dataset(self, name: str | None = None) -> Dataset:
        """A stored dataset (the only one when no name is given), with its class names."""
        return self.session.dataset(name)

    def searcher(
        self,
        stage: str | Stage,
        settings: SearchSettings | None = None,
        *,
        dataset: str | None = None,
        against: str = "train",
    ) -> KnnSearcher:
        """The set-up kNN searcher of one stage over the `against` split of a dataset (cached)."""
        return self.session.searcher(
            self.session.one(stage, "search"), self.dataset(dataset).id, against, settings or SearchSettings()
        )

    def stored_stages(self) -> list[Stage]:
        return self.session.stored_stages()

    # ------------------------------------------------------------ the main job

    def ingest(
        self,
        data: str | Path | Source,
        stages: StagesArg = "first",
        options: IngestOptions | None = None,
        *,
        progress: ProgressFn | None = None,
        **changes: Any,
    ) -> IngestResult:
        """Encode a split of `data` at `stages` and store it. Safe to re-run and to interrupt.
        `options` (or its fields as keywords: split, limit, batch_size, workers, dataset, strict,
        build_index) as `clipvdb ingest` takes them."""
        options = replace(options or IngestOptions(), **changes)
        return ingest.ingest(self.session, _source(data), self.session.stages(stages), options, Watch.of(progress))

    def load_vectors(
        self,
        stage: str | Stage,
        vectors: np.ndarray,
        keys: list[str],
        labels: list[int] | np.ndarray,
        source: str | Path | Source,
        *,
        split: str = "train",
        dataset: str | None = None,
        batch: int = 5000,
        build_index: bool = True,
        index: tuple[str, dict] | None = None,
    ) -> LoadResult:
        """Store vectors computed elsewhere (a GPU run, another tool) as one stage's rows: image rows
        keyed by `keys` (unique within the split) with their labels, then the vectors by binary COPY,
        a transaction per batch, then the stage's index (default: the stage's default kind). The
        vectors' space is this store's encoder (stage first: pixels)."""
        chosen = self.session.one(stage, "load")
        try:
            with self.connection() as conn:
                return ingest.load_vectors(
                    conn,
                    _source(source),
                    chosen,
                    self.encoder_for([chosen]),
                    vectors,
                    keys,
                    labels,
                    split=split,
                    dataset_name=dataset,
                    batch=batch,
                    build_index=build_index,
                    index=index,
                )
        finally:
            self.session.forget()

    def classify(
        self,
        images: ImageInput | list[ImageInput],
        stage: StagesArg = None,
        settings: SearchSettings | None = None,
        *,
        dataset: str | None = None,
        against: str = "train",
        prompts: str = "study",
        batch_size: int = 32,
    ) -> list[Prediction]:
        """Predictions for each image at each stage (default: every stage with rows), batch by batch.
        Images are file paths, PIL images, HxWx3 uint8 arrays or encoded bytes."""
        settings = settings or SearchSettings()
        settings.check()
        items = query_items(images if isinstance(images, list) else [images])
        chosen = self.session.stages(stage) if stage else self.stored_stages()
        ds = self.dataset(dataset)
        searchers = {s.name: self.session.searcher(s, ds.id, against, settings) for s in chosen if s.name != "origin"}
        encoder = self.encoder_for(chosen)
        origin = encoder is not None and any(s.name == "origin" for s in chosen)
        text = zeroshot.text_embeddings(encoder, ds.classes, prompts) if origin and encoder else None
        out: list[Prediction] = []
        with self.connection() as conn:
            for batch in encode_items(items, chosen, encoder, batch_size=batch_size, workers=0, hash_items=False):
                if batch.failed:
                    raise ImageError(batch.failed[0][1])
                keys = [it.key for it in batch.items]
                for s in chosen:
                    b = predict_batch(conn, s, batch.vectors[s.name], searchers.get(s.name), text)
                    out += as_predictions(keys, b, ds.classes, batch.elapsed_ms.get(s.name, 0.0) / len(keys))
        return out

    def evaluate(
        self,
        data: str | Path | Source,
        stage: StagesArg = "first",
        settings: SearchSettings | None = None,
        options: EvaluateOptions | None = None,
        *,
        progress: ProgressFn | None = None,
        report: Callable[[str], None] | None = None,
        **changes: Any,
    ) -> EvalRun:
        """Classify a labelled split, store every prediction as a run; `run.run_id` for the reports.
        `options` (or its fields as keywords: split, against, limit, batch_size, workers, connections,
        display_freq, dataset, prompts) as `clipvdb evaluate` takes them; `report(line)` gets the
        running accuracy every `display_freq` batches."""
        options = replace(options or EvaluateOptions(), **changes)
        chosen = self.session.stages(stage)
        watch = Watch.of(progress, report)
        return evaluation.evaluate(self.session, _source(data), chosen, settings or SearchSettings(), options, watch)

    def index(self, stages: StagesArg, options: IndexOptions | None = None, **changes: Any) -> list[IndexInfo]:
        """(Re)build each stage's ANN index; without a kind or a parameter, what the stage's size rule
        chooses (recorded as the default, so that a later load chooses again for its size), with any
        parameter given in place of the rule's. `options` (or its fields as keywords: kind, project,
        lists, m, ef_construction, metric) as `clipvdb index` takes them."""
        options = replace(options or IndexOptions(), **changes)
        return reindex.reindex(self.session, parse(stages), options)

    def index_info(self, stage: str | Stage) -> IndexInfo:
        """The stage's index as recorded and as it stands: kind, parameters, rows, size."""
        with self.connection() as conn:
            return indexes.info(conn, self.session.one(stage, "index_info takes"))

    # ------------------------------------------------------------ reports

    def report(self, view: str, run: int | None = None) -> list[dict]:
        """Rows of one report view for one run (default: the latest complete run)."""
        return self.reports(run, (view,))[view]

    def reports(self, run: int | None = None, views: Iterable[str] | None = None) -> dict[str, Any]:
        """{"run_id": run, view: rows, ...} for one run (default: the latest complete run)."""
        chosen = tuple(views) if views else reports.VIEWS
        bad = [v for v in chosen if v not in reports.VIEWS]
        if bad:
            raise UsageError(f"unknown view {bad[0]!r}; choose from {', '.join(reports.VIEWS)}")
        with self.connection() as conn:
            return reports.report(conn, run, chosen)

    def plot(self, out: Path | str, run: int | None = None, *, squared: bool = False) -> list[Path]:
        """The study's figures for one run as PNG files in `out`."""
        from .plots import plot  # matplotlib: only when a figure is drawn

        return plot(self.reports(run), Path(out), squared=squared)

    def runs(self) -> list[dict]:
        """Every run (report_runs), newest first, each with "accuracy": {stage: accuracy_pct}."""
        with self.connection() as conn:
            return reports.runs(conn)

    def run(self, run_id: int, *, limit: int = 10) -> dict | None:
        """Everything about one run (reports.run); None when there is no such run."""
        with self.connection() as conn:
            return reports.run(conn, run_id, limit)

    def experiments(self) -> list[dict]:
        """Every search experiment's rows (report_experiments), newest experiment first."""
        with self.connection() as conn:
            return reports.rows(conn, queries.WEB_EXPERIMENTS)

    def cluster_members(self, clustering_id: int, per_cluster: int = 8) -> list[dict]:
        """A clustering's clusters, largest first (report_cluster_classes): cluster, size,
        majority_class, purity and "image_ids", the `per_cluster` members nearest the centre."""
        with self.connection() as conn:
            return reports.rows(
                conn, queries.WEB_CLUSTER_GRID, {"clustering": clustering_id, "per_cluster": per_cluster}
            )

    def data_overview(self) -> dict:
        """What is stored (reports.data_overview) and "status" (`status()`)."""
        with self.connection() as conn:
            overview = reports.data_overview(conn)
        return {**overview, "status": self.status()}

    # ------------------------------------------------------------ exploration

    def retrieve(
        self,
        text: str | None = None,
        *,
        image: ImageInput | None = None,
        k: int = 10,
        stage: str = "origin",
        dataset: str | None = None,
        split: str = "train",
        exact: bool = False,
    ) -> list[Hit]:
        """Stored images nearest to a text (and/or image) query by cosine distance at stage origin,
        where CLIP's image and text embeddings share one space."""
        if stage != "origin":
            raise StageError("text search works at stage origin only: CLIP's text embedding lives in that space")
        query = retrieval.query_vector(self.encoder, text, image)
        ds = self.dataset(dataset)
        searcher = self.session.searcher(
            self.session.one("origin", "retrieve"), ds.id, split, SearchSettings(k=k, exact=exact, metric="cosine")
        )
        with self.connection() as conn:
            found, _ = searcher.search(conn, query[None, :])
        return retrieval.hits(found[0], ds.classes)

    def neighbors(
        self,
        image: ImageInput,
        stages: StagesArg,
        out: Path | str,
        settings: SearchSettings | None = None,
        *,
        dataset: str | None = None,
        split: str = "train",
    ) -> Grid:
        """One PNG: a row per stage, the query then its k nearest stored images, captioned."""
        settings = settings or SearchSettings(k=10)
        chosen = self.session.stages(stages)
        vectors = embed([image], chosen, self.encoder_for(chosen))
        ds = self.dataset(dataset)
        with self.connection() as conn:
            found = {
                s.name: self.session.searcher(s, ds.id, split, settings).search(conn, vectors[s.name][:1])[0][0]
                for s in chosen
            }
            return retrieval.neighbor_grid(conn, as_image(image), found, ds.classes, Path(out))

    def image_png(self, image_id: int, scale: int = 1) -> bytes:
        """A stored image's pixels, re-read from its source, as PNG bytes (scaled up `scale` times)."""
        with self.connection() as conn:
            return png_bytes(catalog.stored_image(conn, image_id), scale)

    def samples(self, n: int = 8) -> list[dict]:
        """The first `n` stored images outside the training split: {"id", "class"}."""
        with self.connection() as conn:
            return [{"id": i, "class": c} for i, c in catalog.sample_images(conn, n)]

    def stored_stage_names(self) -> list[str]:
        """Stages that hold vectors, in forward-pass order (empty when nothing is stored)."""
        with self.connection() as conn:
            return catalog.stages_with_rows(conn)

    def experiment(
        self,
        stage: StagesArg,
        sizes: list[int],
        *,
        queries: int = 100,
        probes: list[int] | None = None,
        ef_search: list[int] | None = None,
        metric: str = "l2",
    ) -> ExperimentResult:
        """Recall and speed of exact, ivfflat and hnsw search as the stored set grows (experiment.py)."""
        chosen = self.session.stages(stage)
        if len(chosen) != 1:
            raise UsageError("experiment search takes one --stage")
        with self.connection() as conn:
            return experiment.search_experiment(
                conn,
                chosen[0],
                self.encoder_for(chosen),
                sizes,
                n_queries=queries,
                probes=probes,
                ef_search=ef_search,
                metric=metric,
            )

    def plot_experiment(self, result: ExperimentResult, out: Path | str) -> Path:
        """Recall@1 against queries per second, one line per (size, index kind), as a PNG."""
        from .plots import plot_experiment  # matplotlib: only when a figure is drawn

        return plot_experiment(result, Path(out))

    def cluster(self, stage: str | Stage, options: ClusterOptions | None = None, **changes: Any) -> Clustering:
        """Cluster one stage's stored vectors (this store's space, one dataset and split) and store
        the clustering; returns it with its purity, adjusted Rand index and NMI against the labels.
        `options` (or its fields as keywords: method, k, eps, min_samples, linkage, split, dataset,
        sample, seed) as `clipvdb cluster fit` takes them."""
        options = replace(options or ClusterOptions(), **changes)
        return clusters.cluster(self.session, self.session.one(stage, "cluster"), options)

    def learn(self, stage: str | Stage, options: LearnOptions | None = None, **changes: Any) -> LearnedMap:
        """Fit a learned metric on the stage's training split (never the test split), store it, and
        write every stored vector's image under it; searches with `learned=True` then use it.
        `options` (or its fields as keywords: method, dims, seconds, dataset, seed) as `clipvdb learn`
        takes them."""
        options = replace(options or LearnOptions(), **changes)
        return learning.learn(self.session, self.session.one(stage, "learn"), options)

    def clusterings(self) -> list[Clustering]:
        """Every stored clustering with its scores, newest first."""
        with self.connection() as conn:
            return clusters.read(conn)

    def cluster_grid(self, clustering_id: int, out: Path | str, *, per_cluster: int = 8) -> Path:
        """A PNG: a row per cluster, the images nearest its centre, majority class and purity."""
        with self.connection() as conn:
            return clusters.grid(conn, clustering_id, Path(out), per_cluster)

    def train(
        self,
        data: str | Path | Source,
        out: Path | str | None = None,
        options: TrainOptions | None = None,
        *,
        progress: Callable[..., None] | None = None,
        say: Callable[[str], None] | None = None,
        **changes: Any,
    ) -> TrainResult:
        """Train the compact CNN on a labelled split (no database needed) and write its checkpoint to
        `out`, or to the home's models folder as NAME.pt so that `--model NAME` finds it. `options`
        (or its fields as keywords: split, name, widths, epochs, minutes, batch_size, lr, seed, limit,
        workers) as `clipvdb train` takes them."""
        from . import training  # torch: only when training

        options = replace(options or TrainOptions(), **changes)
        path = Path(out).expanduser() if out else models_dir(self.home_dir) / f"{options.name}{CHECKPOINT_SUFFIX}"
        device = None if self.device == config.DEFAULT_DEVICE else self.device
        return training.train(_source(data), path, options, device=device, watch=Watch.of(progress, say))

    def embed(self, images: ImageInput | list[ImageInput], stages: StagesArg = "origin") -> dict[str, np.ndarray]:
        """Vectors per stage for the images (no database needed)."""
        chosen = self.session.stages(stages)
        return embed(images if isinstance(images, list) else [images], chosen, self.encoder_for(chosen))

    # ------------------------------------------------------------ administration

    def status(self) -> dict:
        """Server, pgvector, schema revision, rows per stage, and each stored stage's index: its kind,
        parameters and why (the defaults follow the stored rows: indexes.explain)."""
        info = db.status(self.url)
        info["indexes"] = {}
        if info["revision"] == info["head_revision"]:
            with self.connection() as conn:
                for name, rows in info["rows_per_stage"].items():
                    if rows:
                        idx = indexes.info(conn, storage.as_stored(conn, STAGES[name]))
                        info["indexes"][name] = {
                            "kind": idx.kind,
                            "params": idx.params,
                            "exists": idx.exists,
                            "why": indexes.explain(idx.kind, idx.params, rows),
                        }
        return info

    def upgrade(self, revision: str = "head") -> str | None:
        return db.upgrade(self.url, revision)

    def downgrade(self, revision: str = "base") -> str | None:
        return db.downgrade(self.url, revision)

    def grant_reader(self, role: str, password: str | None = None) -> None:
        """Create (or update) a role that can SELECT every table and view and change nothing."""
        db.grant_reader(self.url, role, password)

    def stop(self) -> bool:
        """Stop this home's embedded server (and a local cluster's workers); False if it was not running.
        Not for a database given by URL."""
        self._require_embedded("db stop")
        self.session.reconnect()
        return embedded.stop(self.home)

    def _require_embedded(self, command: str) -> None:
        if not self.session.embedded:
            raise UsageError(
                f"{command} manages the embedded server; a database given by CLIPVDB_DATABASE_URL is managed "
                "where it runs"
            )

    # ------------------------------------------------------------ Citus

    def start_nodes(self, workers: int = 2) -> dict:
        """Turn this home into a local Citus cluster (the embedded server as coordinator plus
        `workers` workers; nodes.py), bring the schema to head and distribute it; return
        nodes_status(). Not for a database given by URL: point that at a Citus coordinator."""
        if not self.session.embedded:
            raise UsageError(
                "db nodes manages the embedded server's cluster; an external Citus coordinator is used as "
                "CLIPVDB_DATABASE_URL as it is (the migrations distribute the tables there)"
            )
        self.close()
        nodes.start(self.home_dir, workers)
        self.session.reconnect()
        self.session.prepare()
        with self.connection() as conn:
            placed = db.distribute(conn)
            conn.commit()
            for name in STAGE_NAMES:
                db.recount(conn, name)
            conn.commit()
            if "placed" in placed:
                # rows that were already stored moved to the workers; their indexes are rebuilt
                # per shard (ivfflat lists follow the rows per shard)
                for stage in (storage.as_stored(conn, s) for s in STAGES.values()):
                    current = indexes.info(conn, stage)
                    if current.rows and current.exists:
                        indexes.refresh(conn, stage)
        self.session.forget()
        return self.nodes_status()

    def nodes_status(self) -> dict:
        """Nodes, tables (reference or distributed, shards) and shards, bytes and rows per node."""
        with self.connection() as conn:
            return nodes.status(conn)

    def add_node(self, host: str | None = None, port: int = nodes.PORT) -> dict:
        """Add a worker to this home's cluster (a new local one, or an external one at `host`);
        its share of the shards comes with `rebalance()`. Returns nodes_status()."""
        self._require_embedded("db nodes add")
        nodes.add(self.home_dir, host, port)
        self.session.forget()
        return self.nodes_status()

    def rebalance(self, progress: ProgressFn | None = None) -> dict:
        """Move shards until every worker holds its share, waiting to the end (queries go on; a
        moving shard's writes wait). {"job", "moves", "seconds"}."""
        with self.connection() as conn:
            conn.autocommit = True
            try:
                return nodes.rebalance(conn, progress)
            finally:
                conn.autocommit = False

    def remove_node(self, host: str | None = None, port: int = nodes.PORT) -> dict:
        """Drain a worker (its shards move to the others) and remove it: the last local worker, or
        the external one at `host`. Returns nodes_status()."""
        self._require_embedded("db nodes remove")
        nodes.remove(self.home_dir, host, port)
        self.session.forget()
        return self.nodes_status()

    def stop_nodes(self) -> list[str]:
        self.close()
        return nodes.stop(self.home_dir)
