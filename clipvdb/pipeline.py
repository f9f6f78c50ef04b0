"""The image pipeline: items to per-stage vectors, in batches.

Decoding runs in worker processes (forked, so nothing is pickled but each batch's result): a worker
decodes a whole batch and returns it as one uint8 array per input (`first`'s 32x32 pixels, the
encoder's prepared input), so a batch crosses the process boundary once. Floats appear only in the
main process: stage first's vectors from the pixels, the CLIP stages from `Encoder.encode`.
Stage first needs no encoder and imports no torch.

Given a `Timeline`, the pipeline records each batch's decoding and encoding as pieces of work with
their wall-clock spans, so that a command running them beside other work (evaluate's searches) can
share its wall time among them without counting overlapping work twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .encoder import Encoder, TinyEncoder
from .errors import ImageError, UsageError, WorkerError
from .images import (
    ImageInput,
    array_to_image,
    as_image,
    first_stage_pixels,
    first_stage_vectors,
    load_image,
    read_file,
)
from .sources import Item
from .stages import Stage, StageOutput


class Timeline:
    """Pieces of a command's work with their wall-clock spans, and each piece's share of the wall
    time. At every moment the time elapsed is split among the pieces in progress (a batch decoding
    in a worker, being encoded, searched on a connection, stored) in proportion to the threads each
    runs on, as the scheduler shares the cores: an encoder pass weighs its encoder's threads, any
    other piece one (one decoding process, one server backend). Shares never count overlapping work
    twice: they add up, with the time when no piece was in progress (`idle_s`), to the wall time
    since `start`. A piece's share is final once the sweep has passed its end.

    Times are time.perf_counter() values: CLOCK_MONOTONIC on Linux, one clock for every process, so
    a forked decoding worker's spans are on the main process's clock. Thread-safe: a piece begun on
    another thread takes its start under the lock, so the sweep never passes a piece it has not seen.
    A piece running in another process (a batch queued to a decoding worker) is `queue`d with a way
    to read its start: it counts as in progress from then until it is added."""

    def __init__(self, start: float | None = None):
        self._lock = threading.Lock()
        self.start = self.swept = time.perf_counter() if start is None else start
        self.idle_s = 0.0
        self._open: dict[Hashable, tuple[float, float]] = {}  # key: (start, weight)
        self._closed: dict[Hashable, tuple[float, float, float]] = {}  # key: (start, end, weight)
        self._queued: dict[Hashable, Callable[[], float]] = {}
        self._share: dict[Hashable, float] = {}
        self._final: dict[Hashable, float] = {}

    def begin(self, key: Hashable, weight: float = 1.0) -> None:
        with self._lock:
            self._open[key] = (time.perf_counter(), weight)

    def end(self, key: Hashable) -> None:
        with self._lock:
            start, weight = self._open.pop(key)
            self._closed[key] = (start, time.perf_counter(), weight)

    @contextmanager
    def piece(self, key: Hashable, weight: float = 1.0) -> Iterator[None]:
        self.begin(key, weight)
        try:
            yield
        finally:
            self.end(key)

    def queue(self, key: Hashable, started: Callable[[], float]) -> None:
        """A piece running in another process: `started()` is its start, 0.0 until it starts."""
        with self._lock:
            self._queued[key] = started

    def add(self, key: Hashable, start: float, end: float, weight: float = 1.0) -> None:
        """A finished piece seen late (a batch a worker decoded)."""
        with self._lock:
            self._queued.pop(key, None)
            # a start read a moment after the sweep passed it: the moments already shared stay so
            self._closed[key] = (max(start, self.swept), max(end, self.swept), weight)

    def advance(self) -> None:
        """Share out the wall time from the last sweep to now."""
        with self._lock:
            horizon = time.perf_counter()
            if horizon <= self.swept:
                return
            running = {k: (s, 1.0) for k, started in self._queued.items() if (s := started()) > 0}
            spans = {**self._closed, **{k: (s, horizon, w) for k, (s, w) in {**self._open, **running}.items()}}
            cuts = sorted(
                {self.swept, horizon} | {t for s, e, _ in spans.values() for t in (s, e) if self.swept < t < horizon}
            )
            for a, b in zip(cuts, cuts[1:], strict=False):
                active = [(k, w) for k, (s, e, w) in spans.items() if s <= a and e >= b]
                total = sum(w for _, w in active)
                for k, w in active:
                    self._share[k] = self._share.get(k, 0.0) + (b - a) * w / total
                if not active:
                    self.idle_s += b - a
            self.swept = horizon
            for k, (_, e, _) in list(self._closed.items()):
                if e <= horizon:
                    self._final[k] = self._share.pop(k, 0.0)
                    del self._closed[k]

    def final(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._final

    def take(self, key: Hashable) -> float:
        """A final piece's share in seconds, forgotten once taken."""
        with self._lock:
            return self._final.pop(key)

    @property
    def wall_s(self) -> float:
        return self.swept - self.start


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_beside(encoder: Encoder | None, workers: int) -> int | None:
    """The threads a torch encoder computes with while a pipeline runs: the cores its decoding
    workers leave, at least one, at most what torch has (None for an encoder without torch). Its
    threads, spread over cores the workers and the searches also use, wait on each other at every
    layer: the shipped CNN inside evaluate took 2.0-2.2 ms per image at 2 threads on 2 cores beside
    a decoding worker, against 0.8-1.2 ms for the bare network, and the command ran slower than at
    one thread."""
    have = encoder_threads(encoder)
    return None if have is None else max(1, min(have, usable_cores() - workers))


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch computes with `threads` inside, and gets its own count back after (None: unchanged)."""
    torch = sys.modules.get("torch")
    if threads is None or torch is None:
        yield
        return
    before = int(torch.get_num_threads())
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def encoder_threads(encoder: Encoder | None) -> int | None:
    """The threads a torch encoder computes with (torch's intra-op threads); None for the tiny
    numpy encoder or none. torch is read from sys.modules: a torch encoder has imported it."""
    torch = sys.modules.get("torch")
    if encoder is None or isinstance(encoder, TinyEncoder) or torch is None:
        return None
    return int(torch.get_num_threads())


@dataclass
class Decoded:
    """One batch, decoded: the items that decoded, their arrays, and those that did not. `started`
    and `ended` (perf_counter, in the process that decoded it) span the decoding."""

    index: list[int]
    sha: list[bytes]
    first: np.ndarray | None
    prepared: np.ndarray | None
    failed: list[tuple[int, str]]
    decode_ms: float
    started: float = 0.0
    ended: float = 0.0


@dataclass
class EncodedBatch:
    """One batch's vectors. `no`: its place in the run (0, 1, ...), the key of its pieces in a
    Timeline: ("decode", no) and, when an encoder ran, ("encode", no). `elapsed_ms` per stage is the
    encoder's pass up to that stage (cumulative: stages share one pass)."""

    items: list[Item]
    sha: list[bytes]
    vectors: dict[str, np.ndarray]
    elapsed_ms: dict[str, float]
    decode_ms: float = 0.0
    failed: list[tuple[Item, str]] = field(default_factory=list)
    no: int = 0


@dataclass
class _Job:
    items: list[Item]
    need_first: bool
    prepare: Callable | None
    hash_items: bool


_job: _Job | None = None  # the job a forked worker decodes (inherited, never pickled)
_FORK_LOCK = threading.Lock()  # held while _job is set and a pool forks its workers
_started: Any = None  # shared doubles: when a worker started each batch (perf_counter), 0.0 before


def _decode_image(item: Item, hash_item: bool) -> tuple[Image.Image, bytes]:
    """The image, and its sha256 when asked (a file is read once for both)."""
    if item.image is not None:
        return as_image(item.image, item.key), item.sha256() if hash_item else b""
    if item.array is not None:
        return array_to_image(item.array), item.sha256() if hash_item else b""
    assert item.path is not None
    data = read_file(item.path, item.key)
    return load_image(data, item.key), hashlib.sha256(data).digest() if hash_item else b""


def decode(job: _Job, start: int, stop: int) -> Decoded:
    t0 = time.perf_counter()
    index, sha, first, prepared, failed = [], [], [], [], []
    for i in range(start, stop):
        item = job.items[i]
        try:
            img, h = _decode_image(item, job.hash_items)
            f = first_stage_pixels(img) if job.need_first else None
            p = job.prepare(img) if job.prepare is not None else None
        except ImageError as exc:
            failed.append((i, str(exc)))
            continue
        except Exception as exc:  # one bad file must not stop the batch
            failed.append((i, f"{item.key}: cannot be read ({exc.__class__.__name__}: {exc})"))
            continue
        index.append(i)
        sha.append(h)
        if f is not None:
            first.append(f)
        if p is not None:
            prepared.append(p)
    t1 = time.perf_counter()
    return Decoded(
        index=index,
        sha=sha,
        failed=failed,
        first=np.stack(first) if first else None,
        prepared=np.stack(prepared) if prepared else None,
        decode_ms=(t1 - t0) * 1000,
        started=t0,
        ended=t1,
    )


def _decode_in_worker(i: int, start: int, stop: int) -> Decoded:
    assert _job is not None
    if _started is not None:
        _started[i] = time.perf_counter()
    return decode(_job, start, stop)


_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def _die_with_parent(parent: int) -> None:
    """In a decoding worker: be killed when the process that forked it ends, however it ends (a kill
    -9 included), so that no worker outlives an interrupted ingest or evaluate. Linux only."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent was gone before the request took effect
        os._exit(1)
    # the parent handles Ctrl-C and SIGTERM (it inherited handlers that raise in its main thread):
    # a worker ignores Ctrl-C sent to the process group and dies quietly when the pool ends it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def default_workers(encoding: bool = True) -> int:
    """Decoding processes, at most 4: one per core beyond the first when the main process runs the
    encoder; one per core for stage first alone, where the main process mostly waits on COPY
    (50,000 CIFAR-10 images, no index: 10.3 s with 2 workers against 12.6 s with 1)."""
    return min(4, max(0, (os.cpu_count() or 1) - (1 if encoding else 0)))


def decoded_batches(job: _Job, batch_size: int, workers: int, timeline: Timeline | None = None) -> Iterator[Decoded]:
    """Decoded batches in order; with workers, up to 2 per worker decoded ahead. With a timeline,
    batch i's decoding is its piece ("decode", i)."""
    global _job, _started
    spans = [(s, min(s + batch_size, len(job.items))) for s in range(0, len(job.items), batch_size)]
    if workers <= 0 or len(spans) <= 1:
        for i, (s, e) in enumerate(spans):
            d = decode(job, s, e)
            if timeline is not None:
                timeline.add(("decode", i), d.started, d.ended)
            yield d
        return

    context = multiprocessing.get_context("fork")
    started = context.RawArray("d", len(spans)) if timeline is not None else None

    def submit(pool: ProcessPoolExecutor, i: int) -> Future:
        if timeline is not None and started is not None:
            timeline.queue(("decode", i), lambda: started[i])
        return pool.submit(_decode_in_worker, i, *spans[i])

    try:
        with ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            ahead: deque[Future] = deque()
            todo = iter(range(len(spans)))
            # a fork-context pool forks all its workers at the first submit, and they inherit _job:
            # one thread at a time sets it and forks (two jobs in threads of one process would
            # otherwise hand one job's workers the other's items, and forks from two threads at once
            # are refused where filelock's fork guard is loaded)
            with _FORK_LOCK:
                _job, _started = job, started
                try:
                    ahead.append(submit(pool, next(todo)))
                finally:
                    _job = _started = None
            for i in todo:
                ahead.append(submit(pool, i))
                if len(ahead) >= 2 * workers:
                    break
            received = 0
            while ahead:
                done = ahead.popleft().result()
                if timeline is not None:
                    timeline.add(("decode", received), done.started, done.ended)
                received += 1
                nxt = next(todo, None)
                if nxt is not None:
                    ahead.append(submit(pool, nxt))
                yield done
    except BrokenProcessPool as exc:
        # a worker was killed (kill -9, the out-of-memory killer); the pool ended the others
        raise WorkerError(
            "a decoding worker process died (killed, or out of memory); whole batches were kept: "
            "run the same command again (--workers 0 decodes in the main process)"
        ) from exc


def encode_items(
    items: list[Item],
    stages: list[Stage],
    encoder: Encoder | None,
    batch_size: int = 64,
    workers: int | None = None,
    hash_items: bool = True,
    timeline: Timeline | None = None,
) -> Iterator[EncodedBatch]:
    """Yield one EncodedBatch per batch: vectors for the items that decoded and are finite. With a
    timeline, each batch's decoding and encoding are pieces of it (EncodedBatch.no)."""
    need_first = any(not s.uses_clip for s in stages)
    clip_stages = [s for s in stages if s.uses_clip]
    if clip_stages and encoder is None:
        raise ImageError(f"stage {clip_stages[0].name} needs an encoder")
    job = _Job(items, need_first, encoder.prepare if clip_stages and encoder else None, hash_items)
    workers = default_workers(bool(clip_stages)) if workers is None else workers
    threads = encoder_threads(encoder) if timeline is not None and clip_stages else None
    for no, d in enumerate(decoded_batches(job, batch_size, workers, timeline)):
        failed = [(items[i], reason) for i, reason in d.failed]
        out = StageOutput()
        if d.index:
            if need_first:
                assert d.first is not None
                out.vectors["first"] = first_stage_vectors(d.first)
                out.elapsed_ms["first"] = 0.0
            if clip_stages:
                assert encoder is not None and d.prepared is not None
                if timeline is not None:
                    timeline.begin(("encode", no), float(threads or 1))
                try:
                    clip_out = encoder.encode(d.prepared, clip_stages)
                finally:
                    if timeline is not None:
                        timeline.end(("encode", no))
                out.vectors.update(clip_out.vectors)
                out.elapsed_ms.update(clip_out.elapsed_ms)
        # An image whose vector is NaN or infinite at any stage is refused; the rest go on.
        finite = np.ones(len(d.index), dtype=bool)
        for v in out.vectors.values():
            finite &= np.isfinite(v).all(axis=1)
        for i, ok in zip(d.index, finite, strict=True):
            if not ok:
                failed.append((items[i], f"{items[i].key}: the encoder gave NaN or infinite values"))
        yield EncodedBatch(
            items=[items[i] for i, ok in zip(d.index, finite, strict=True) if ok],
            sha=[h for h, ok in zip(d.sha, finite, strict=True) if ok],
            vectors={n: v[finite] for n, v in out.vectors.items()},
            elapsed_ms=out.elapsed_ms,
            decode_ms=d.decode_ms,
            failed=failed,
            no=no,
        )


def query_items(images: list[ImageInput]) -> list[Item]:
    """Items for images given to classify or embed: paths (checked here), PIL images, arrays, bytes."""
    out = []
    for n, img in enumerate(images):
        if isinstance(img, str | Path):
            p = Path(img)
            if not p.exists():
                raise UsageError(f"image not found: {img}")
            if p.is_dir():
                raise UsageError(f"{img} is a directory; pass image files (e.g. {img}/*.png)")
            out.append(Item(key=str(img), label=-1, path=p))
        else:
            out.append(Item(key=f"<image {n}>", label=-1, image=img))
    return out


def embed(images: list[ImageInput], stages: list[Stage], encoder: Encoder | None) -> dict[str, np.ndarray]:
    """Vectors per stage for the images, in the order given; ImageError on the first bad image."""
    items = query_items(images)
    parts: dict[str, list[np.ndarray]] = {s.name: [] for s in stages}
    for batch in encode_items(items, stages, encoder, batch_size=32, workers=0, hash_items=False):
        if batch.failed:
            raise ImageError(batch.failed[0][1])
        for name, v in batch.vectors.items():
            parts[name].append(v)
    return {n: np.concatenate(v) for n, v in parts.items()}
