"""`clipvdb.Store`: the object at the centre of the library. The CLI, the web page, the demo and the
bench all go through it.

    import clipvdb
    store = clipvdb.Store()                                   # the embedded server; Store(url) another
    store.ingest("cifar10/", stages="first", split="train")   # IngestResult
    preds = store.classify(["cat.png", pil_image], stage="first")   # list[Prediction]
    run = store.evaluate("cifar10/", stage="first", split="test", limit=1000)   # EvalRun
    rows = store.report("report_accuracy", run=run.run_id)    # the view's rows: dicts, ready for pandas

A thin facade over its `Session` (session.py), which every job runs on: the pool, the schema brought
to head on first use, the encoder loaded when a CLIP stage needs it, the cached datasets and
searchers. A job's options are one object (options.py); the Store also takes its fields as keywords.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from . import (
    catalog,
    citus,
    clusters,
    config,
    db,
    duplicates,
    embedded,
    experiment,
    indexes,
    ingest,
    nodes,
    reindex,
    reports,
    retrieval,
)
from . import classify as classifying
from . import evaluate as evaluation
from . import learn as learning
from .clusters import Clustering
from .duplicates import Duplicates
from .edits import DatasetInfo, Edit, Editor
from .encoder import CHECKPOINT_SUFFIX, Encoder, check_trained_name, models_dir
from .errors import StageError
from .evaluate import EvalRun
from .experiment import ExperimentResult
from .images import ImageInput, png_bytes
from .indexes import IndexInfo
from .ingest import IngestResult, LoadResult
from .knn import KnnSearcher, SearchSettings, settings_with
from .learned import LearnedMap
from .nodes import NodesStatus, Rebalance
from .options import (
    ClassifyOptions,
    ClusterOptions,
    DuplicatesOptions,
    EvaluateOptions,
    ExperimentOptions,
    IndexOptions,
    IngestOptions,
    LearnOptions,
    LoadOptions,
    SessionOptions,
    TrainOptions,
    Watch,
    gathered,
)
from .pipeline import embed
from .predict import Prediction
from .reports import ClusterRow, DataOverview, ExperimentRow, Report, RunDetail, RunSummary, Sample, Status
from .retrieval import Grid, Hit
from .session import Dataset, Session, StagesArg, parse
from .sources import Source, open_source
from .stages import Stage

if TYPE_CHECKING:
    from .training import TrainResult

ProgressFn = Callable[[int, int], None]


def _of_session(name: str, doc: str) -> Any:
    """A read-only attribute of the Store that is its session's."""
    return property(lambda self: getattr(self.session, name), doc=doc)


def _source(data: str | Path | Source) -> Source:
    return data if isinstance(data, Source) else open_source(str(data))


class Store:
    """A clipvdb database: ingest, classify, evaluate, report, search. The jobs run on its `session`."""

    def __init__(
        self,
        url: str | None = None,
        options: SessionOptions | None = None,
        *,
        encoder: Encoder | None = None,
        announce: Callable[[str], None] | None = None,
        **changes: Any,
    ):
        """`url`: a PostgreSQL database (default: CLIPVDB_DATABASE_URL, else the home's embedded
        server). `options` (or its fields as keywords: home, model, pretrained, device, pool_size,
        migrate); `encoder` in place of loading `model`; `announce(line)` for the schema notice."""
        self.session = Session(url, options, encoder=encoder, announce=announce, **changes)

    home = _of_session("home", "The home given (None: CLIPVDB_HOME, else the user data directory).")
    home_dir = _of_session("home_dir", "This store's home: given, else CLIPVDB_HOME, else the user data directory.")
    model = _of_session("model", "The model's name or checkpoint path.")
    pretrained = _of_session("pretrained", "The model's weights tag (None: its default).")
    device = _of_session("device", "Where the encoder runs.")
    url = _of_session("url", "The database URL: given, else CLIPVDB_DATABASE_URL, else the embedded server (started).")

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
        self, stage: str | Stage, settings: SearchSettings | None = None, *, dataset: str | None = None, against="train"
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
        options = gathered(options, IngestOptions, changes)
        return ingest.ingest(self.session, _source(data), self.session.stages(stages), options, Watch.of(progress))

    def load_vectors(
        self,
        stage: str | Stage,
        vectors: np.ndarray,
        keys: list[str],
        labels: list[int] | np.ndarray,
        source: str | Path | Source,
        options: LoadOptions | None = None,
        **changes: Any,
    ) -> LoadResult:
        """Store vectors computed elsewhere (a GPU run, another tool) as one stage's rows of this store's
        encoder (stage first: pixels): image rows keyed by `keys` (unique in the split) with their labels,
        the vectors by binary COPY a transaction per batch, then the stage's index. `options` (or its
        fields as keywords: split, dataset, batch, build_index, index)."""
        options = gathered(options, LoadOptions, changes)
        chosen = self.session.one(stage, "load_vectors takes")
        return ingest.load_vectors(self.session, _source(source), chosen, (vectors, keys, labels), options)

    def classify(
        self,
        images: ImageInput | list[ImageInput],
        stage: StagesArg = None,
        settings: SearchSettings | None = None,
        options: ClassifyOptions | None = None,
        **changes: Any,
    ) -> list[Prediction]:
        """Predictions for each image at each stage (default: every stage with rows), batch by batch.
        Images are file paths, PIL images, HxWx3 uint8 arrays or encoded bytes. `options` (or its
        fields as keywords: dataset, against, prompts, batch_size) as `clipvdb classify` takes them."""
        settings, options = settings_with(settings, changes), gathered(options, ClassifyOptions, changes)
        chosen = self.session.stages(stage) if stage else self.stored_stages()
        batch = images if isinstance(images, list) else [images]
        return classifying.classify(self.session, batch, chosen, settings, options)

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
        """Classify a labelled split, store every prediction as a run (`run.run_id` for the reports). `options`
        (or its fields: split, against, limit, batch_size, workers, connections, display_freq, dataset, prompts)
        as `clipvdb evaluate` takes them; `report(line)` gets the running accuracy every `display_freq` batches."""
        settings, options = settings_with(settings, changes), gathered(options, EvaluateOptions, changes)
        chosen = self.session.stages(stage)
        watch = Watch.of(progress, report)
        return evaluation.evaluate(self.session, _source(data), chosen, settings, options, watch)

    def compare(self, data: str | Path | Source, models: Sequence[str], stage: StagesArg, **kw: Any) -> list[EvalRun]:
        """`evaluate` with several models (names or checkpoints, each with its default weights) as ONE
        run, each against its own stored vectors: an EvalRun per model, sharing the run id. The
        keywords as evaluate's (`clipvdb evaluate --model A,B`)."""
        watch = Watch.of(kw.pop("progress", None), kw.pop("report", None))
        settings = settings_with(kw.pop("settings", None), kw)
        options = gathered(kw.pop("options", None), EvaluateOptions, kw)
        return evaluation.compare(self.session, models, stage, _source(data), settings, options, watch)

    def index(self, stages: StagesArg, options: IndexOptions | None = None, **changes: Any) -> list[IndexInfo]:
        """(Re)build each stage's ANN index (reindex.py): `options` (or its fields as keywords: kind,
        project, lists, m, ef_construction, metric, dataset, model) as `clipvdb index` takes them."""
        options = gathered(options, IndexOptions, changes)
        return reindex.reindex(self.session, parse(stages), options)

    def index_info(self, stage: str | Stage, dataset: str | None = None) -> IndexInfo:
        """The index of the stage's space under this Store's model over the dataset's rows (default:
        the only dataset): kind, parameters, rows, size."""
        with self.connection() as conn:
            space = self.session.space(conn, self.session.one(stage, "index_info takes"))
            return indexes.info(conn, space, catalog.dataset_id(conn, dataset))

    # ------------------------------------------------------------ reports

    def report(self, view: str, run: int | None = None) -> list[dict]:
        """Rows of one report view for one run (default: the latest complete run)."""
        return self.reports(run, (view,))[view]

    def reports(self, run: int | None = None, views: Iterable[str] | None = None) -> Report:
        """The report views' rows for one run (default: the latest complete run)."""
        with self.connection() as conn:
            return reports.report(conn, run, tuple(views) if views else reports.VIEWS)

    def plot(self, out: Path | str, run: int | Sequence[int] | None = None, *, squared: bool = False) -> list[Path]:
        """The study's figures for a run (default: the latest complete one) as PNG files in `out`, and
        one trade-off chart of every model x stage when the runs cover several models."""
        from .plots import plot, tradeoff  # matplotlib: only when a figure is drawn

        runs = [run] if run is None or isinstance(run, int) else list(run)
        data = [self.reports(r) for r in runs]
        paths = [p for d in data for p in plot(d, Path(out), squared=squared)]
        if len(data) > 1 or reports.several_models(data[0]["report_timing"]):
            paths.append(tradeoff(data, Path(out)))
        return paths

    def runs(self) -> list[RunSummary]:
        """Every run (report_runs), newest first, each with its accuracy per stage."""
        with self.connection() as conn:
            return reports.runs(conn)

    def run(self, run_id: int, *, limit: int = 10) -> RunDetail | None:
        """Everything about one run (reports.run); None when there is no such run."""
        with self.connection() as conn:
            return reports.run(conn, run_id, limit)

    def experiments(self) -> list[ExperimentRow]:
        """Every search experiment's rows (report_experiments), newest experiment first."""
        with self.connection() as conn:
            return reports.experiments(conn)

    def cluster_members(self, clustering_id: int, per_cluster: int = 8) -> list[ClusterRow]:
        """A clustering's clusters, largest first, each with its `per_cluster` members nearest the centre."""
        with self.connection() as conn:
            return reports.cluster_members(conn, clustering_id, per_cluster)

    def data_overview(self) -> DataOverview:
        """What is stored (reports.data_overview) with the server's `status()`."""
        with self.connection() as conn:
            overview = reports.data_overview(conn)
        overview.status = self.status()
        return overview

    # ------------------------------------------------------------ the stored data (edits.py, duplicates.py)

    def datasets(self) -> list[DatasetInfo]:
        return Editor(self.session).datasets()

    def delete(self, dataset: str | None = None, **choice: Any) -> Edit:
        """Delete images (split=, paths=, ids=) with their vectors at every stage (vacuum=True also
        VACUUMs the tables they left, else autovacuum does); dry_run=True counts."""
        return Editor(self.session).delete(dataset, **choice)

    def relabel(self, dataset: str | None = None, to: str | None = None, **choice: Any) -> Edit:
        """Give images (split=, paths=, ids=) the class `to`, or each file of a CSV (table=) its own."""
        return Editor(self.session).relabel(dataset, to, **choice)

    def rename_dataset(self, name: str, new_name: str, *, dry_run: bool = False) -> Edit:
        return Editor(self.session).rename(name, new_name, dry_run=dry_run)

    def drop_dataset(self, name: str, *, dry_run: bool = False, vacuum: bool = False) -> Edit:
        """Drop a dataset with its images, their vectors, its runs and clusterings."""
        return Editor(self.session).drop(name, dry_run=dry_run, vacuum=vacuum)

    def duplicates(self, stage: str | Stage, options: DuplicatesOptions | None = None, **changes: Any) -> Duplicates:
        """Near-duplicate pairs at a stage (within=, across=, threshold=, dataset=), stored for report_duplicates."""
        chosen = self.session.one(stage, "scan for duplicates")
        return duplicates.find(self.session, chosen, gathered(options, DuplicatesOptions, changes))

    def duplicates_gallery(self, found: Duplicates, out: Path | str, *, limit: int = 60) -> Path:
        return duplicates.gallery(self.session, found, out, limit=limit)

    def duplicate_pairs(self, limit: int = 200) -> tuple[list[dict], list[dict]]:
        return duplicates.stored(self.session, limit)

    def without_leaks(self, run_id: int, model_no: int = 0) -> dict:
        """A run's accuracy per stage (its model_no-th model's) without the test images with a training near-copy."""
        return duplicates.without_leaks(self.session, run_id, model_no)

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
        return retrieval.retrieve(self.session, (text, image), SearchSettings(k=k, exact=exact), (dataset, split))

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
        chosen = self.session.stages(stages)
        return retrieval.neighbors(self.session, image, chosen, settings or SearchSettings(k=10), (dataset, split), out)

    def image_png(self, image_id: int, scale: int = 1) -> bytes:
        """A stored image's pixels, re-read from its source, as PNG bytes (scaled up `scale` times)."""
        with self.connection() as conn:
            return png_bytes(catalog.stored_image(conn, image_id), scale)

    def samples(self, n: int = 8) -> list[Sample]:  # the first `n` stored images outside the training split
        with self.connection() as conn:
            return reports.samples(conn, n)

    def stored_stage_names(self) -> list[str]:
        """Stages that hold vectors, in forward-pass order (empty when nothing is stored)."""
        with self.connection() as conn:
            return catalog.stages_with_rows(conn)

    def experiment(
        self, stage: str | Stage, options: ExperimentOptions | None = None, **changes: Any
    ) -> ExperimentResult:
        """Recall and speed of exact, ivfflat and hnsw search as the stored set grows (experiment.py).
        `options` (or its fields as keywords: sizes, queries, probes, ef_search, metric) as `clipvdb
        experiment search` takes them."""
        if isinstance(options, (list, tuple)):  # the sizes, positional before the options object
            changes["sizes"], options = options, None
        options = gathered(options, ExperimentOptions, changes)
        return experiment.search_experiment(self.session, self.session.one(stage, "experiment search takes"), options)

    def plot_experiment(self, result: ExperimentResult, out: Path | str) -> Path:
        """Recall@1 against queries per second, one line per (size, index kind), as a PNG."""
        from .plots import plot_experiment  # matplotlib: only when a figure is drawn

        return plot_experiment(result, Path(out))

    def cluster(self, stage: str | Stage, options: ClusterOptions | None = None, **changes: Any) -> Clustering:
        """Cluster one stage's stored vectors (this store's space, one dataset and split) and store
        the clustering; returns it with its purity, adjusted Rand index and NMI against the labels.
        `options` (or its fields as keywords: method, k, eps, min_samples, linkage, split, dataset,
        sample, seed) as `clipvdb cluster fit` takes them."""
        options = gathered(options, ClusterOptions, changes)
        return clusters.cluster(self.session, self.session.one(stage, "cluster"), options)

    def learn(self, stage: str | Stage, options: LearnOptions | None = None, **changes: Any) -> LearnedMap:
        """Fit a learned metric on the stage's training split (never the test split), store it, and
        write every stored vector's image under it; searches with `learned=True` then use it.
        `options` (or its fields as keywords: method, dims, seconds, dataset, seed) as `clipvdb learn`
        takes them."""
        options = gathered(options, LearnOptions, changes)
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
        """Train the compact CNN, or fine-tune `base`, on a labelled split (no database needed); the checkpoint
        goes to `out`, or to the home's models folder as NAME.pt (`--model NAME`). `options` (or its fields as
        keywords: split, name, base, widths, epochs, minutes, batch_size, lr, seed, limit, workers) as the CLI's."""
        from . import finetune, training  # torch: only when training

        options = gathered(options, TrainOptions, changes)
        name = check_trained_name(options.model_name())
        path = Path(out).expanduser() if out else models_dir(self.home_dir) / (name + CHECKPOINT_SUFFIX)
        device = None if self.device == config.DEFAULT_DEVICE else self.device
        fit = finetune.finetune if options.base else training.train
        return fit(_source(data), path, options, device=device, watch=Watch.of(progress, say))

    def embed(self, images: ImageInput | list[ImageInput], stages: StagesArg = "origin") -> dict[str, np.ndarray]:
        """Vectors per stage for the images (no database needed)."""
        chosen = self.session.stages(stages)
        return embed(images if isinstance(images, list) else [images], chosen, self.encoder_for(chosen))

    # ------------------------------------------------------------ administration

    def status(self) -> Status:
        """Server, pgvector, schema revision, rows per stage, and each stored stage's index: its kind,
        parameters and why (the defaults follow the stored rows: indexes.explain)."""
        return reports.status(self.session)

    def upgrade(self, revision: str = "head") -> str | None:
        return db.upgrade(self.url, revision)

    def downgrade(self, revision: str = "base") -> str | None:
        return db.downgrade(self.url, revision)

    def grant_reader(self, role: str, password: str | None = None) -> None:
        """Create (or update) a role that can SELECT every table and view and change nothing."""
        db.grant_reader(self.url, role, password)

    def stop(self) -> bool:
        """Stop this home's embedded server and a local cluster's workers (False: it was not running)."""
        citus.require_embedded(self.session, "db stop")
        self.session.reconnect()
        return embedded.stop(self.home)

    # ------------------------------------------------------------ Citus (citus.py)

    def start_nodes(self, workers: int = 2) -> NodesStatus:
        """Turn this home into a local Citus cluster of `workers` workers and distribute the schema."""
        return citus.start(self.session, workers)

    def nodes_status(self) -> NodesStatus:
        return citus.status(self.session)

    def add_node(self, host: str | None = None, port: int = nodes.PORT) -> NodesStatus:
        return citus.add(self.session, host, port)

    def rebalance(self, progress: ProgressFn | None = None) -> Rebalance:
        return citus.rebalance(self.session, progress)

    def remove_node(self, host: str | None = None, port: int = nodes.PORT) -> NodesStatus:
        return citus.remove(self.session, host, port)

    def stop_nodes(self) -> list[str]:
        self.close()
        return nodes.stop(self.home_dir)
