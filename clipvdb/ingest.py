"""Ingest: encode a labelled split at one or more stages and bulk-load the vectors.

Each batch is one transaction: image rows, then each stage's vectors by binary COPY into a staging
table and INSERT ... ON CONFLICT DO NOTHING. A killed ingest therefore leaves whole batches only,
and a re-run skips what is stored (no duplicate rows, no re-encoding).
"""

from __future__ import annotations

import itertools
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import psycopg

from . import catalog, config, db, indexes, learned, projection
from .catalog import Space
from .encoder import Encoder
from .errors import DatabaseError, SkippedImagesError, UsageError
from .options import IngestOptions, LoadOptions, Watch
from .pipeline import EncodedBatch, encode_items
from .session import Session
from .sources import Item, Source
from .stages import Stage
from .storage import StageRows


@dataclass
class IngestResult:
    dataset: str
    split: str
    stages: list[str]
    total: int
    already_stored: int
    inserted: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    seconds: float = 0.0
    index: dict[str, dict] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        done = self.total - self.already_stored
        return done / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "stages": self.stages,
            "total": self.total,
            "already_stored": self.already_stored,
            "inserted": self.inserted,
            "failed": [{"item": k, "reason": r} for k, r in self.failed],
            "ignored": self.ignored,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "index": self.index,
        }


def store_vectors(
    conn: psycopg.Connection,
    rows: StageRows,
    image_ids: list[int],
    vectors: np.ndarray,
    proj: projection.Projection | None = None,
    lmap: learned.LearnedMap | None = None,
) -> int:
    """One batch of one stage's vectors, with their projection and learned image when the stage has
    them; returns rows added. The caller commits."""
    added = rows.copy(conn, image_ids, vectors)
    if lmap is not None:
        learned.add(conn, rows, lmap, image_ids, vectors)
    if proj is not None:
        projection.add(conn, rows, proj, image_ids, vectors)
    return added


# A load of at least this many rows, and of a fifth of what is stored, drops the index and builds
# it afresh at the end.
BULK_LOAD_ROWS = 1000


def _drop_index_for_bulk_load(conn: psycopg.Connection, space: Space, dataset: int, adding: int) -> bool:
    """A large load goes faster without the ANN index (ingest rebuilds it afterwards, refitting a
    projection, choosing the default kind again for the new size); so does an index the stored rows
    have outgrown (or shrunk from) since it was built (indexes.IndexInfo.due). The index of the
    space's rows of `dataset`, which the load adds to. Returns whether it was dropped."""
    indexes.lock_space_index(conn, space)
    current = indexes.info(conn, space, dataset)
    rows = current.rows
    dropped = (adding >= BULK_LOAD_ROWS and adding >= rows // 5) or (
        current.exists and current.due(rows + adding) is not None
    )
    if dropped:
        indexes.drop(conn, space, dataset)
    conn.commit()
    return dropped


def ingest(
    session: Session, source: Source, stages: list[Stage], options: IngestOptions, watch: Watch | None = None
) -> IngestResult:
    """Encode `options.split` of `source` at `stages` and store it. Safe to re-run and to interrupt."""
    options.check()
    encoder = session.encoder_for(stages)
    try:
        with session.connection() as conn:
            try:
                return _ingest(conn, source, stages, encoder, options, watch or Watch())
            except psycopg.OperationalError as exc:
                raise _failure(conn, exc) from exc
    finally:
        session.forget()


def _failure(conn: psycopg.Connection, exc: psycopg.OperationalError) -> Exception:
    """The one-line error for a database failure during ingest; whole batches were kept either way."""
    if isinstance(exc, psycopg.errors.DiskFull):
        return db.disk_full_error(exc, "run the same ingest again (whole batches were kept)")
    if not conn.closed and not conn.broken:  # the server refused a statement (a limit), still there
        return DatabaseError(
            f"the database refused a statement during ingest ({db.first_line(exc)}); whole batches were "
            "kept: fix the cause, then run the same ingest again"
        )
    return DatabaseError(
        f"lost the database connection during ingest ({db.first_line(exc)}); whole batches were kept: "
        "run the same ingest again"
    )


def _ingest(
    conn: psycopg.Connection,
    source: Source,
    stages: list[Stage],
    encoder: Encoder | None,
    options: IngestOptions,
    watch: Watch,
) -> IngestResult:
    start = time.perf_counter()
    split, strict, build_index = options.split, options.strict, options.build_index
    batch_size = options.batch_size or (config.DEFAULT_BATCH_SIZE if encoder else config.DEFAULT_FIRST_BATCH_SIZE)
    items: list[Item] = source.items(split)
    if options.limit is not None:
        items = items[: options.limit]
    dataset = catalog.register_dataset(conn, source, options.dataset)
    spaces = {s.name: catalog.get_or_create_space(conn, s, encoder) for s in stages}
    slices = {s.name: StageRows(s, spaces[s.name].id, dataset, split) for s in stages}
    conn.commit()
    stored = {name: rows.keys(conn) for name, rows in slices.items()}
    conn.commit()
    todo = [it for it in items if any(it.key not in stored[s.name] for s in stages)]
    result = IngestResult(
        dataset=options.dataset or source.name,
        split=split,
        stages=[s.name for s in stages],
        total=len(items),
        already_stored=len(items) - len(todo),
        inserted={s.name: 0 for s in stages},
        ignored=list(source.ignored or []),
    )
    for key, reason in source.rejected or []:
        if strict:
            raise SkippedImagesError(f"{reason} (stopped by --strict)")
        result.failed.append((key, reason))
    # rows added while a projected index stands get their projection at once; after a drop the
    # rebuild at the end refits and writes them all
    projections = {s.name: projection.load(conn, spaces[s.name], dataset) for s in stages}
    maps = {s.name: learned.load(conn, spaces[s.name]) for s in stages}  # learned maps stay current for new rows
    dropped: set[str] = set()
    if build_index:
        for s in stages:
            if _drop_index_for_bulk_load(conn, spaces[s.name], dataset, len(todo)):
                projections[s.name] = None
                dropped.add(s.name)
    if todo:  # before the first batch: a run evaluated while this ingest stores is not current
        catalog.mark_changed(conn, dataset)
        conn.commit()
    watch.progress(0, len(todo))

    def store(batch: EncodedBatch) -> int:
        if batch.items:
            image_ids = catalog.batch_image_ids(conn, dataset, split, batch.items, batch.sha)
            for s in stages:
                result.inserted[s.name] += store_vectors(
                    conn, slices[s.name], image_ids, batch.vectors[s.name], projections[s.name], maps[s.name]
                )
            conn.commit()
        return len(batch.items) + len(batch.failed)

    # Each batch is stored on a writer thread while the next one is decoded and encoded: its COPY,
    # projections and commit overlap the encoder instead of adding to it. One batch at most waits,
    # and batches commit in order, so a killed ingest still leaves whole batches only. The None at
    # the end waits for the last one.
    with ThreadPoolExecutor(1, thread_name_prefix="clipvdb-store") as writer:
        pending: Future[int] | None = None
        try:
            for batch in itertools.chain(
                encode_items(todo, stages, encoder, batch_size=batch_size, workers=options.workers), [None]
            ):
                for item, reason in batch.failed if batch is not None else []:
                    if strict:
                        raise SkippedImagesError(f"{reason} (stopped by --strict; nothing of this batch was stored)")
                    result.failed.append((item.key, reason))
                if pending is not None:
                    watch.progress(pending.result(), len(todo))
                pending = writer.submit(store, batch) if batch is not None else None
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM while the writer's batch runs (waiting on a lock, say): cancel its
            # statement so that the batch rolls back now instead of the exit waiting for it.
            if pending is not None and not pending.done():
                conn.cancel_safe()
            raise
    for s in stages:
        db.recount(conn, s.name)
    conn.commit()
    if any(result.inserted.values()):  # its own transaction: Citus refuses it after the recount's
        catalog.mark_changed(conn, dataset)
        conn.commit()
    if build_index:
        for s in stages:
            # A standing index took the new rows itself (and their projections went in with them):
            # rebuild only what this load dropped, or what is missing.
            if s.name in dropped or not indexes.info(conn, spaces[s.name], dataset).exists:
                info = indexes.refresh(conn, spaces[s.name], dataset)
                result.index[s.name] = {"kind": info.kind, **info.params}
    result.seconds = time.perf_counter() - start
    return result


@dataclass
class LoadResult:
    """What `Store.load_vectors` stored: image id per key, rows added, COPY seconds, the index built."""

    ids: dict[str, int]
    added: int
    load_seconds: float
    index: indexes.IndexInfo | None


def load_vectors(
    session: Session,
    source: Source,
    stage: Stage,
    rows_of: tuple[np.ndarray, list[str], list[int] | np.ndarray],
    options: LoadOptions,
) -> LoadResult:
    """Vectors computed elsewhere as one stage's rows (`rows_of`: the vectors, their image keys and
    labels): image rows keyed by the keys, then the vectors by binary COPY, a transaction per batch,
    then the stage's index. Their space is the session's encoder (stage first: pixels)."""
    options.check()
    try:
        with session.connection() as conn:
            return _load_vectors(conn, source, stage, session.encoder_for([stage]), rows_of, options)
    finally:
        session.forget()


def _load_vectors(conn, source: Source, stage: Stage, encoder, rows_of, options: LoadOptions) -> LoadResult:
    vectors, keys, labels = rows_of
    batch, build_index, index = options.batch, options.build_index, options.index
    if vectors.ndim != 2 or vectors.shape[1] != stage.dim:
        raise UsageError(f"stage {stage.name} stores {stage.dim}-dimensional vectors; got shape {vectors.shape}")
    if not len(vectors) == len(keys) == len(labels):
        raise UsageError(f"{len(vectors)} vectors, {len(keys)} keys and {len(labels)} labels: give one of each")
    dataset = catalog.register_dataset(conn, source, options.dataset)
    space = catalog.get_or_create_space(conn, stage, encoder)
    rows = StageRows(stage, space.id, dataset, options.split)
    conn.commit()
    ids: dict[str, int] = {}
    for s in range(0, len(keys), batch):
        part = [(k, int(y), bytes(32)) for k, y in zip(keys[s : s + batch], labels[s : s + batch], strict=True)]
        ids.update(catalog.upsert_images(conn, dataset, options.split, part))
        conn.commit()
    # a standing projection takes the new rows at once; a rebuilt index refits it
    proj, lmap = (None if build_index else projection.load(conn, space, dataset)), learned.load(conn, space)
    if build_index:
        indexes.lock_space_index(conn, space)
        indexes.drop(conn, space, dataset)
        conn.commit()
    catalog.mark_changed(conn, dataset)
    conn.commit()
    start = time.perf_counter()
    added = 0
    for s in range(0, len(keys), batch):
        added += store_vectors(conn, rows, [ids[k] for k in keys[s : s + batch]], vectors[s : s + batch], proj, lmap)
        conn.commit()
    load_s = time.perf_counter() - start
    db.recount(conn, stage.name)
    conn.commit()
    catalog.mark_changed(conn, dataset)
    conn.commit()
    info = None
    if build_index:
        info = indexes.build(conn, space, dataset, *index) if index else indexes.build_default(conn, space, dataset)
    return LoadResult(ids, added, load_s, info)
