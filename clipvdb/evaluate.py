"""Evaluate: classify a labelled split, store every prediction, report accuracy and time per stage.

The pipeline keeps both cores busy: images decode in worker processes, the main process encodes,
each batch's kNN statement runs on one of `connections` pooled connections while the next batch
is encoded, and predictions are stored by binary COPY.

Time per image is what an image costs: the command's wall time shared among the work in progress
(pipeline.Timeline). At every moment the time elapsed is split among the pieces running then (a
batch decoding, being encoded, searched at a stage on a connection, stored) in proportion to their
threads (an encoder pass: the encoder's threads; any other piece: one), so work that overlaps is
never counted twice, and decode + encode (the pass, once) + every stage's query + store + other (no
piece in progress) add up to the wall time. A stage's encode time is its share of the batch's pass
up to that stage's depth: stages asked together share one pass that stops at the deepest, and each
is charged the cumulative cost of reaching its depth. A batch's rows are stored once its pieces'
shares are final: at its turn, its searches having ended. The statements' own time stays in
batch_query_ms; how many connections, decoding workers, encoder threads and cores ran is in the
run's params.

The study's perf_test.py options: --num (here --limit; --num is still accepted), --batch-size,
--display-freq. A run is stored as 'running' and only marked 'complete' at the end, so the report
views never show half a run.
"""

from __future__ import annotations

import contextlib
import json
import queue
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import psycopg

from . import catalog, config, db, queries
from .encoder import Encoder
from .errors import DatabaseError, UsageError
from .knn import KnnSearcher, SearchSettings
from .options import EvaluateOptions, Watch
from .pipeline import (
    EncodedBatch,
    Timeline,
    default_workers,
    encode_items,
    threads_beside,
    torch_threads,
    usable_cores,
)
from .predict import BatchPredictions, predict_batch, predictors
from .session import Session, StagesArg
from .sources import Source
from .stages import Stage

TIMING = "wall share"  # eval_runs.params->>'timing': how encode_ms and query_ms were measured


@dataclass
class StageTotals:
    """One stage's counts and times in ms: encode_ms and query_ms are shares of the wall time (the
    pass up to this stage; this stage's statements), the batch_* ones the encoder's and the
    statements' own time summed over batches (overlapping work counted in each)."""

    n: int = 0
    correct: int = 0
    encode_ms: float = 0.0
    query_ms: float = 0.0
    batch_encode_ms: float = 0.0
    batch_query_ms: float = 0.0

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / self.n if self.n else 0.0


@dataclass
class EvalRun:
    """One model's part of a run (a run of several models: one each, sharing the run id)."""

    run_id: int
    dataset: str
    split: str
    stages: dict[str, StageTotals] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    decode_ms: float = 0.0
    encode_ms: float = 0.0
    store_ms: float = 0.0
    concurrency: dict = field(default_factory=dict)
    model: str = catalog.PIXELS_MODEL  # the encoder whose vectors were searched (stage first alone: pixels)
    totals: dict = field(default_factory=dict)  # seconds: decode_s ... wall_s, as eval_runs.params holds them

    @property
    def images(self) -> int:
        return max((t.n for t in self.stages.values()), default=0)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def query_ms(self) -> float:
        return sum(t.query_ms for t in self.stages.values())

    @property
    def other_ms(self) -> float:
        """The wall time no piece of work was in progress: setting up, building rows, waiting."""
        return max(0.0, self.seconds * 1000 - self.decode_ms - self.encode_ms - self.query_ms - self.store_ms)

    def summary(self) -> str:
        """One line: the images, the wall time, how it was shared out, and what ran at once."""
        c = self.concurrency
        threads = f", {c['encoder_threads']} encoder threads" if c.get("encoder_threads") else ""
        return (
            f"{self.images} images in {self.seconds:.1f} s ({self.images_per_s:.0f} images/s) with "
            f"{c.get('connections')} connections, {c.get('workers')} decoding workers{threads} on "
            f"{c.get('cores')} cores; the wall time shared among the work in progress: decode "
            f"{self.decode_ms / 1000:.1f} s, encode {self.encode_ms / 1000:.1f} s (one pass), query "
            f"{self.query_ms / 1000:.1f} s (every stage), store {self.store_ms / 1000:.1f} s, other "
            f"{self.other_ms / 1000:.1f} s"
        )

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "model": self.model,
            "dataset": self.dataset,
            "split": self.split,
            "seconds": round(self.seconds, 3),
            "images": self.images,
            "images_per_s": round(self.images_per_s, 1),
            "timing": TIMING,
            "concurrency": self.concurrency,
            "decode_s": round(self.decode_ms / 1000, 3),
            "encode_s": round(self.encode_ms / 1000, 3),
            "query_s": round(self.query_ms / 1000, 3),
            "store_s": round(self.store_ms / 1000, 3),
            "other_s": round(self.other_ms / 1000, 3),
            "stages": {
                n: {
                    "n": t.n,
                    "correct": t.correct,
                    "accuracy_pct": round(t.accuracy, 2),
                    "encode_s": round(t.encode_ms / 1000, 3),
                    "query_s": round(t.query_ms / 1000, 3),
                    "batch_encode_s": round(t.batch_encode_ms / 1000, 3),
                    "batch_query_s": round(t.batch_query_ms / 1000, 3),
                }
                for n, t in self.stages.items()
            },
            "failed": [{"item": k, "reason": r} for k, r in self.failed],
        }


PREDICTION_COLUMNS = (
    "run_id",
    "model_no",
    "stage",
    "image_id",
    "predicted",
    "true_label",
    "distance",
    "nearest_distance",
    "neighbor_id",
    "decode_ms",
    "encode_ms",
    "query_ms",
    "batch_no",
    "batch_size",
    "batch_query_ms",
)
PREDICTION_TYPES = [
    "int4",
    "int2",
    "text",
    "int8",
    "int4",
    "int4",
    "float8",
    "float8",
    "int8",
    "float8",
    "float8",
    "float8",
    "int4",
    "int4",
    "float8",
]


def _store(conn: psycopg.Connection, rows: list[tuple]) -> None:
    with conn.cursor() as cur:
        with cur.copy(queries.copy_predictions(PREDICTION_COLUMNS)) as copy:
            copy.set_types(PREDICTION_TYPES)
            for r in rows:
                copy.write_row(r)


def _coordinator_answers(conn: psycopg.Connection) -> bool:
    """After a connection error: whether this connection's server still answers and is a Citus
    coordinator, so that what failed was a worker (Citus may relay a worker's own message, such as
    'terminating connection due to unexpected postmaster exit', without naming the node)."""
    try:
        conn.rollback()
        return db.distributed(conn)
    except psycopg.Error:
        return False


def fail_abandoned_runs(conn: psycopg.Connection) -> list[int]:
    """Mark failed every 'running' run whose session is gone (its process was killed: no handler ran);
    returns their ids. The caller commits."""
    running = [r[0] for r in conn.execute(queries.RUNNING_RUNS).fetchall()]
    if not running:
        return []
    held = {r[0] for r in conn.execute(queries.HELD_RUN_LOCKS, (queries.RUN_LOCK_KEY,)).fetchall()}
    abandoned = [r for r in running if r not in held]
    if abandoned:
        conn.execute(queries.FAIL_RUNS, (abandoned,))
    return abandoned


def run_params(settings: SearchSettings, searchers: dict[str, KnnSearcher], stages: list[Stage], **extra) -> dict:
    """Everything that changes an answer, as stored in eval_runs.params (report_runs shows it)."""
    return {
        "metric": settings.metric,
        "k": settings.k,
        "vote": settings.vote,
        "ks": list(settings.ks) or None,
        "exact": settings.exact,
        "probes": settings.probes,
        "ef_search": settings.ef_search,
        "learned": {
            n: {"method": m.method, "dims": m.dims, "fitted_rows": m.fitted_rows, **m.params}
            for n, m in ((n, s.learned) for n, s in searchers.items())
            if m is not None
        }
        or None,
        "candidates": settings.n_candidates if any(s.projection is not None for s in searchers.values()) else None,
        "index": {
            n: {
                "kind": s.index_kind,
                "exists": s.index_exists,
                "used": not settings.exact,
                "projected": s.projection is not None,
                **s.index_params,
            }
            for n, s in searchers.items()
        },
        "storage": {s.name: s.sql_type for s in stages},
        **extra,
    }


def evaluate(
    session: Session,
    source: Source,
    stages: list[Stage],
    settings: SearchSettings,
    options: EvaluateOptions,
    watch: Watch | None = None,
) -> EvalRun:
    """Classify `options.split` of `source` at `stages` against the stored `options.against` split and
    store every prediction as one run. A connection of the session records the run and stores the
    predictions; `options.connections` more search batches at once."""
    return _evaluate_parts([(session, stages)], source, settings, options, watch or Watch())[0]


def compare(
    session: Session,
    models: Sequence[str],
    stages: StagesArg,
    source: Source,
    settings: SearchSettings,
    options: EvaluateOptions,
    watch: Watch | None = None,
) -> list[EvalRun]:
    """`evaluate` with several models as ONE run: each model (a name or checkpoint, on a session of
    its own beside `session`, the same database) answers `stages` from its own stored vectors. The
    models take their turn over the same images, each its own pass on its own clock, so each model's
    times per image are its own. Stage first, pixels whatever the model, is answered once, with the
    first model. A result per model, sharing the run id."""
    with contextlib.ExitStack() as beside:
        sessions = [session if m == session.model else beside.enter_context(session.beside(m)) for m in models]
        parts = [(s, s.stages(stages)) for s in sessions]
        return _evaluate_parts(parts, source, settings, options, watch or Watch())


def _evaluate_parts(
    parts: list[tuple[Session, list[Stage]]],
    source: Source,
    settings: SearchSettings,
    options: EvaluateOptions,
    watch: Watch,
) -> list[EvalRun]:
    """The run of every (session, its stages) of `parts`, each model's turn after the last's."""
    settings.check()
    options.check()
    if not parts:
        raise UsageError("no model to evaluate: name one or more (--model A,B)")
    if len(parts) > 1:
        parts = parts[:1] + [(session, [s for s in stages if s.name != "first"]) for session, stages in parts[1:]]
        idle = [session.model for session, stages in parts[1:] if not stages]
        if idle:
            raise UsageError(
                f"model {idle[0]} has no stage to answer: stage first is pixels whatever the model and is "
                "answered once; ask for second, third or origin too, or leave that model out"
            )
    # every model's weights loaded before any clock starts
    ids = [_identity(session.encoder_for(stages), stages) for session, stages in parts]
    names = [m for m, _ in ids]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"model {twice[0]} is named twice: a run holds each model once")
    with parts[0][0].connection() as conn:
        return _evaluate(parts, conn, source, settings, options, watch, ids)


def _identity(encoder: Encoder | None, stages: list[Stage]) -> tuple[str, str]:
    """The model and weights a part's vectors come from (stage first alone: pixels)."""
    if encoder is not None and any(s.uses_clip for s in stages):
        return encoder.name, encoder.weights
    return catalog.PIXELS_MODEL, catalog.PIXELS_WEIGHTS


def _default_batch_size(conn: psycopg.Connection) -> int:
    distributed = db.distributed(conn)
    conn.rollback()
    return config.DEFAULT_EVAL_BATCH_SIZE_DISTRIBUTED if distributed else config.DEFAULT_EVAL_BATCH_SIZE


@dataclass
class _Run:
    """What every model's turn of a run shares: the run's row, its images and their dataset."""

    conn: psycopg.Connection
    source: Source
    settings: SearchSettings
    options: EvaluateOptions
    watch: Watch
    items: list
    dataset: int
    classes: list[str]
    batch_size: int
    ids: list[tuple[str, str]]  # each model's (model, weights), in turn
    stages: list[str]  # every stage any model answers
    run_id: int | None = None
    entries: list[dict] = field(default_factory=list)  # per model: eval_runs.params->'models'


def _evaluate(
    parts: list[tuple[Session, list[Stage]]],
    conn: psycopg.Connection,
    source: Source,
    settings: SearchSettings,
    options: EvaluateOptions,
    watch: Watch,
    ids: list[tuple[str, str]],
) -> list[EvalRun]:
    """The run: its row, each model's turn, then 'complete' (or 'failed', whatever stopped it)."""
    batch_size = options.batch_size or _default_batch_size(conn)  # asked before the run's clock starts
    start = time.perf_counter()
    items = source.items(options.split)
    if options.limit is not None:
        items = items[: options.limit]
    fail_abandoned_runs(conn)
    dataset = catalog.register_dataset(conn, source, options.dataset)
    classes = catalog.class_names(conn, dataset)
    conn.commit()
    # the later models' searchers (their stored vectors there) before the first model's turn
    ready = {
        no: predictors(s, st, settings, (dataset, options.against), classes, options.prompts)
        for no, (s, st) in enumerate(parts)
        if no
    }
    if len(parts) > 1:
        start = time.perf_counter()  # the models' turns are timed alone, without the run's set-up
    asked = list(dict.fromkeys(s.name for _, st in parts for s in st))
    run = _Run(conn, source, settings, options, watch, items, dataset, classes, batch_size, ids, asked)
    results: list[EvalRun] = []
    try:
        watch.progress(0, len(items) * len(parts))
        for no, (session, stages) in enumerate(parts):
            clock = start if no == 0 else time.perf_counter()
            results.append(_turn(run, no, session, stages, clock, ready.get(no)))
        conn.execute(queries.COMPLETE_RUN, (json.dumps(_done(run, results)), run.run_id))
        conn.commit()
        conn.execute(queries.UNLOCK_RUN, (queries.RUN_LOCK_KEY, run.run_id))
        conn.commit()
    except BaseException as exc:
        if run.run_id is None:
            raise
        run_id = run.run_id
        parts[0][0].mark_failed(run_id)
        _release(conn, run_id)
        if isinstance(exc, psycopg.errors.DiskFull):
            raise db.disk_full_error(exc, f"run evaluate again (run {run_id} is marked failed)") from exc
        if isinstance(exc, psycopg.Error) and (
            db.node_failure(exc) or (isinstance(exc, psycopg.OperationalError) and _coordinator_answers(conn))
        ):
            raise DatabaseError(
                f"evaluate run {run_id} failed: a Citus node did not answer ({db.first_line(exc)}); the run is "
                "marked failed and left out of the reports; check 'clipvdb db nodes status', then run evaluate again"
            ) from exc
        if isinstance(exc, psycopg.OperationalError):
            raise DatabaseError(
                f"lost the database connection during evaluate run {run_id} ({db.first_line(exc)}); "
                "the run is marked failed and left out of the reports; run evaluate again"
            ) from exc
        raise
    return results


def _done(run: _Run, results: list[EvalRun]) -> dict:
    """What a complete run adds to its params: the times (a run of several models: each model's
    turn's added up, and per model everything it searched and its own times, params->'models')."""
    if len(results) == 1:
        return results[0].totals
    summed = {k: round(sum(r.totals[k] for r in results), 3) for k in results[0].totals}
    per_model = {key: {e["model"]: e[key] for e in run.entries} for key in ("index", "storage")}
    shared = {
        "prompts": next((e["prompts"] for e in run.entries if e["prompts"]), None),
        "candidates": next((e["candidates"] for e in run.entries if e["candidates"]), None),
    }
    return {**summed, **per_model, **shared, "models": run.entries}


# a run of several models keeps these at the top of its params; the rest is per model
COMMON = ("metric", "k", "vote", "ks", "exact", "probes", "ef_search", "limit", "batch_size", "against", "timing")


def _begin(run: _Run, params: dict) -> int:
    """The run's row, recorded as 'running' (with the first model's turn's params), and its lock."""
    conn, o = run.conn, run.options
    if len(run.ids) > 1:
        params = {k: params[k] for k in COMMON}
    model, weights = (",".join(x) for x in zip(*run.ids, strict=True))
    run_id = db.scalar(
        conn,
        queries.INSERT_RUN,
        (run.dataset, o.split, run.stages, model, weights, run.settings.k, json.dumps(params)),
    )
    conn.execute(queries.LOCK_RUN, (queries.RUN_LOCK_KEY, run_id))  # held from before the row is seen
    conn.commit()
    return run_id


def _turn(
    run: _Run, no: int, session: Session, stages: list[Stage], start: float, ready: tuple | None = None
) -> EvalRun:
    """One model's turn: its pass over the run's images, its searches and its stored predictions,
    timed on a clock of its own from `start`; `ready`: its searchers and class rows, set up already."""
    conn, settings, options, watch, items = run.conn, run.settings, run.options, run.watch, run.items
    timeline = Timeline(start)
    encoder = session.encoder_for(stages)
    where = (run.dataset, options.against)
    searchers, text = ready or predictors(session, stages, settings, where, run.classes, options.prompts)
    clip = any(s.uses_clip for s in stages)
    workers = default_workers(clip) if options.workers is None else options.workers
    concurrency = {
        "connections": options.connections,
        "workers": workers,
        "encoder_threads": threads_beside(encoder, workers) if clip else None,
        "cores": usable_cores(),
    }
    params = run_params(
        settings,
        searchers,
        stages,
        limit=options.limit,
        batch_size=run.batch_size,
        against=options.against,
        prompts=options.prompts if text is not None else None,
        timing=TIMING,
        **concurrency,
    )
    model, weights = run.ids[no]
    entry = {"model": model, "weights": weights, "stages": [s.name for s in stages], **params}
    run.entries.append(entry)
    if run.run_id is None:
        run.run_id = _begin(run, params)
    result = EvalRun(
        run.run_id,
        options.dataset or run.source.name,
        options.split,
        {s.name: StageTotals() for s in stages},
        concurrency=concurrency,
        model=model,
    )
    where_stored = (run.dataset, options.split)
    recorder = _Recorder(conn, run.run_id, no, stages, bool(settings.ks), where_stored, result, timeline)
    with torch_threads(concurrency["encoder_threads"]):
        done = 0
        searched: deque[tuple[EncodedBatch, dict[str, BatchPredictions]]] = deque()
        stored: list[int] = []

        def store_ready(everything: bool = False) -> None:
            timeline.advance()
            while searched and (everything or _final(timeline, searched[0][0], stages)):
                batch, preds = searched.popleft()
                if recorder.store_batch(batch, preds):
                    stored.append(batch.no)

        batches = encode_items(items, stages, encoder, batch_size=run.batch_size, workers=workers, timeline=timeline)
        searching = _searched(batches, stages, searchers, text, session, options.connections, timeline)
        for b, (batch, preds) in enumerate(searching):
            result.failed.extend((it.key, reason) for it, reason in batch.failed)
            _count(batch, stages, preds, result)
            searched.append((batch, preds))
            store_ready()
            done += len(batch.items) + len(batch.failed)
            watch.progress(len(batch.items) + len(batch.failed), len(items) * len(run.ids))
            if options.display_freq and (b + 1) % options.display_freq == 0:
                label = f"{model} " if len(run.ids) > 1 else ""
                watch.say(
                    f"[{label}{done}/{len(items)}] "
                    + "  ".join(f"{n}: {t.accuracy:.2f}%" for n, t in result.stages.items())
                )
        store_ready(everything=True)  # every piece has ended and been seen: every share is final
        timeline.advance()
        result.store_ms = sum(timeline.take(("store", no_)) for no_ in stored) * 1000
        result.totals = {
            "decode_s": round(result.decode_ms / 1000, 3),
            "encode_s": round(result.encode_ms / 1000, 3),
            "query_s": round(result.query_ms / 1000, 3),
            "store_s": round(result.store_ms / 1000, 3),
            "other_s": round(timeline.idle_s, 3),
            "wall_s": round(timeline.wall_s, 3),
        }
        entry.update(result.totals)
    result.seconds = time.perf_counter() - start
    return result


def _release(conn: psycopg.Connection, run_id: int) -> None:
    """Give back a failed run's lock when its connection still works (a pooled one lives on)."""
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        conn.execute(queries.UNLOCK_RUN, (queries.RUN_LOCK_KEY, run_id))
        conn.commit()
    except psycopg.Error:
        pass


def _searched(
    batches: Iterator[EncodedBatch],
    stages: list[Stage],
    searchers: dict[str, KnnSearcher],
    text: np.ndarray | None,
    session: Session,
    n_connections: int,
    timeline: Timeline,
) -> Iterator[tuple[EncodedBatch, dict[str, BatchPredictions]]]:
    """Each encoded batch with its predictions, in order; up to n_connections batches searched at
    once on their own connections while the main thread encodes the next. Each stage's search of a
    batch is a piece of the timeline: ("query", batch no, stage)."""
    lent: queue.Queue = queue.Queue()
    with session.connections(n_connections) as conns, ThreadPoolExecutor(max(1, n_connections)) as pool:
        for c in conns:
            lent.put(c)

        def search(c: psycopg.Connection, batch: EncodedBatch, s: Stage) -> BatchPredictions:
            with timeline.piece(("query", batch.no, s.name)):
                return predict_batch(c, s, batch.vectors[s.name], searchers.get(s.name), text)

        def work(batch: EncodedBatch) -> dict[str, BatchPredictions]:
            c = lent.get()
            try:
                return {s.name: search(c, batch, s) for s in stages} if batch.items else {}
            finally:
                lent.put(c)

        ahead: deque[tuple[EncodedBatch, Future]] = deque()
        for batch in batches:
            ahead.append((batch, pool.submit(work, batch)))
            while len(ahead) > n_connections:
                first, fut = ahead.popleft()
                yield first, fut.result()
        while ahead:
            first, fut = ahead.popleft()
            yield first, fut.result()


def _store_neighbors(conn: psycopg.Connection, run: tuple[int, int], stages, preds, image_ids) -> None:
    """Each query's nearest neighbors, stored once, so that report_accuracy_by_k scores every k
    and vote from one search."""
    db.copy_rows(
        conn,
        queries.COPY_RUN_NEIGHBORS,
        ["int4", "int2", "text", "int8", "int2", "int8", "int4", "float8", "float8"],
        (
            (*run, s.name, image_ids[i], rank, n.image_id, n.label, n.distance, n.similarity)
            for s in stages
            for i, found in enumerate(preds[s.name].neighbors)
            for rank, n in enumerate(found, start=1)
        ),
    )


def _count(batch: EncodedBatch, stages, preds: dict[str, BatchPredictions], result: EvalRun) -> None:
    """A searched batch's images and right answers per stage (counted at once, for the progress)."""
    if not batch.items:
        return
    labels = np.array([it.label for it in batch.items])
    for s in stages:
        t = result.stages[s.name]
        t.n += len(batch.items)
        t.correct += int((preds[s.name].labels == labels).sum())


def _encoded(batch: EncodedBatch, stages) -> bool:
    """Whether the encoder ran on the batch (a piece ("encode", no) of the timeline)."""
    return any(s.uses_clip and s.name in batch.elapsed_ms for s in stages)


def _final(timeline: Timeline, batch: EncodedBatch, stages) -> bool:
    """Whether every piece of the batch has its final share of the wall time."""
    keys: list[tuple] = [("decode", batch.no)]
    keys += [("encode", batch.no)] if _encoded(batch, stages) else []
    keys += [("query", batch.no, s.name) for s in stages] if batch.items else []
    return all(timeline.final(k) for k in keys)


@dataclass
class _Recorder:
    """Stores a run's predictions batch by batch, each with its pieces' shares of the wall time."""

    conn: psycopg.Connection
    run_id: int
    model_no: int  # the model's place in the run
    stages: list[Stage]
    neighbors: bool  # several k: each query's neighbors are stored too
    where: tuple[int, str]  # the dataset and split classified
    result: EvalRun
    timeline: Timeline

    def store_batch(self, batch: EncodedBatch, preds: dict[str, BatchPredictions]) -> bool:
        """Store a batch's predictions (the storing a piece ("store", no) of its own); whether there
        was anything to store."""
        timeline, result, stages = self.timeline, self.result, self.stages
        decode_s = timeline.take(("decode", batch.no))
        encode_s = timeline.take(("encode", batch.no)) if _encoded(batch, stages) else 0.0
        query_s = {s.name: timeline.take(("query", batch.no, s.name)) for s in stages} if batch.items else {}
        result.decode_ms += decode_s * 1000
        result.encode_ms += encode_s * 1000
        if not batch.items:
            return False
        with timeline.piece(("store", batch.no)):
            image_ids = catalog.batch_image_ids(self.conn, *self.where, batch.items, batch.sha)
            _store(self.conn, self._rows(batch, preds, image_ids, (decode_s, encode_s, query_s)))
            if self.neighbors:
                _store_neighbors(self.conn, (self.run_id, self.model_no), stages, preds, image_ids)
            self.conn.commit()
        return True

    def _rows(self, batch: EncodedBatch, preds: dict[str, BatchPredictions], image_ids, shares) -> list[tuple]:
        """One row per image and stage. Per image: the batch's shares of the wall time (`shares`:
        decode s, encode s, query s per stage) over its images; a stage's encode is the pass's share
        times the part of the pass up to that stage."""
        decode_s, encode_s, query_s = shares
        n = len(batch.items)
        labels = [it.label for it in batch.items]
        decode_ms = decode_s * 1000 / max(n + len(batch.failed), 1)
        pass_ms = max(batch.elapsed_ms.values(), default=0.0)
        rows: list[tuple] = []
        for s in self.stages:
            p = preds[s.name]
            elapsed = batch.elapsed_ms.get(s.name, 0.0)
            encode_ms = encode_s * 1000 * (elapsed / pass_ms if pass_ms > 0 else 0.0) / n
            query_ms = query_s[s.name] * 1000 / n
            t = self.result.stages[s.name]
            t.encode_ms += encode_ms * n
            t.query_ms += query_ms * n
            t.batch_encode_ms += elapsed
            t.batch_query_ms += p.batch_ms
            for i in range(n):
                rows.append(
                    (
                        self.run_id,
                        self.model_no,
                        s.name,
                        image_ids[i],
                        int(p.labels[i]),
                        int(labels[i]),
                        float(p.distance[i]),
                        float(p.nearest_distance[i]),
                        p.neighbor_id[i],
                        decode_ms,
                        encode_ms,
                        query_ms,
                        batch.no,
                        n,
                        p.batch_ms,
                    )
                )
        return rows
