"""Shared helpers of the benchmark items: configuration, the report, data, timing, CPU accounting."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench import statements
from clipvdb import STAGES, SearchSettings, Stage, Store, queries, synthetic
from clipvdb.images import first_stage_pixels, first_stage_vectors, load_image
from clipvdb.sources import Source, open_source
from clipvdb.stages import parse_stages

if TYPE_CHECKING:
    from clipvdb import LoadResult

CLI = [sys.executable, "-m", "clipvdb"]  # the command a user types, as a subprocess of this Python


def timed(args: list[str], env: dict, cwd: Path | None = None) -> tuple[float, str]:
    """One clipvdb command as a subprocess (run in `cwd`: a checkout there comes first on the path),
    timed from outside: (seconds, stdout); exits on failure."""
    start = time.perf_counter()
    out = subprocess.run(CLI + args, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        where = f" at {cwd}" if cwd else ""
        raise SystemExit(f"{' '.join(args)}{where} failed ({out.returncode}): {out.stderr.strip()[-600:]}")
    return elapsed, out.stdout


BUDGET_S = 90.0  # the most one measured pass may take; a pass stopped early reports what it answered


STUDY = {  # the study's seconds for 1,000 test images: (encoder, query)
    "origin": (128.0, 0.0),
    "first": (0.0, 290.0),
    "second": (87.0, 234.0),
    "third": (103.0, 486.0),
}


@dataclass
class Config:
    quick: bool
    n_train: int
    n_test: int
    n_query: int  # test queries for the per-setting sweeps
    n_exact_db: int  # queries for pgvector's exact scan (slow: ~0.4 s each at 50k)
    probes: list[int]
    ef_search: list[int]
    enc_batches: list[int]
    enc_images: int
    scale_sizes: list[int]


FULL = Config(
    quick=False,
    n_train=50_000,
    n_test=10_000,
    n_query=500,
    n_exact_db=100,
    probes=[1, 2, 5, 10],
    ef_search=[40, 100, 200],
    enc_batches=[1, 32, 128],
    enc_images=64,
    scale_sizes=[5_000, 20_000, 50_000, 200_000],
)


QUICK = Config(
    quick=True,
    n_train=2_000,
    n_test=200,
    n_query=100,
    n_exact_db=20,
    probes=[1, 5],
    ef_search=[40],
    enc_batches=[1, 4],
    enc_images=8,
    scale_sizes=[500, 2_000],
)


class Report:
    def __init__(self):
        self.parts: list[str] = []

    def h(self, text: str) -> None:
        self.parts.append(f"\n### {text}\n")
        print(f"\n== {text}", flush=True)

    def p(self, text: str) -> None:
        self.parts.append(text + "\n")
        print(text, flush=True)

    def table(self, header: list[str], rows: list[list]) -> None:
        self.parts.append("| " + " | ".join(header) + " |")
        self.parts.append("|" + "---|" * len(header))
        for r in rows:
            self.parts.append("| " + " | ".join(_cell(c) for c in r) + " |")
        self.parts.append("")
        for r in rows:
            print("  " + "  ".join(_cell(c) for c in r), flush=True)

    def text(self) -> str:
        return "\n".join(self.parts) + "\n"


def _cell(c) -> str:
    if isinstance(c, float):
        return f"{c:.3f}" if abs(c) < 100 else f"{c:,.0f}"
    if isinstance(c, int):
        return f"{c:,}"
    return str(c)


def load_pixels(source: Source, split: str, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    items = source.items(split)[:n]
    if not items:
        return np.empty((0, 3072), np.float32), np.array([], dtype=int), []
    pixels = np.stack(
        [first_stage_pixels(load_image(it.path, it.key)) if it.path is not None else it.array for it in items]
    )
    X = first_stage_vectors(pixels)
    return X, np.array([it.label for it in items]), [it.key for it in items]


def exact_baseline(Xtr: np.ndarray, Xte: np.ndarray, chunk: int = 500) -> tuple[np.ndarray, float]:
    """In-process exact 1-NN: batched matrix products in torch. Returns nearest index and seconds."""
    start = time.perf_counter()
    tr = torch.from_numpy(Xtr)
    tr_sq = (tr * tr).sum(1)
    out = np.empty(len(Xte), dtype=np.int64)
    for s in range(0, len(Xte), chunk):
        q = torch.from_numpy(Xte[s : s + chunk])
        d = tr_sq[None, :] - 2 * q @ tr.T
        out[s : s + chunk] = d.argmin(1).numpy()
    return out, time.perf_counter() - start


def load_stage(
    store: Store,
    stage: Stage,
    source: Source,
    split: str,
    keys,
    labels,
    X: np.ndarray,
    *,
    batch: int = 5000,
    index: tuple[str, dict] | None = None,
) -> LoadResult:
    """Store.load_vectors: image rows, vectors by binary COPY, then an index (default: the stage's)."""
    return store.load_vectors(stage, X, list(keys), list(labels), source, split=split, batch=batch, index=index)


def index_seconds(result: LoadResult) -> float:
    """Seconds the load's index build took (0 when it built none)."""
    return (result.index.build_seconds or 0.0) if result.index else 0.0


def empty_stage(store: Store, stage: Stage) -> None:
    """Remove every row of a stage (with its projections and what else references them)."""
    with store.connection() as conn:
        conn.execute(statements.truncate_cascade(stage.table))
        conn.commit()


def ensure_first_loaded(store: Store, source: Source, data: dict) -> dict[str, int]:
    """The whole training set at stage first with its default index (item 2 leaves 20,000 rows).
    Returns the training images' ids by key."""
    Xtr, ytr, ktr = data["train"]
    stage = STAGES["first"]
    idx = store.index_info(stage)
    with store.connection() as conn:
        train_rows = conn.execute(statements.split_rows(stage), ("train",)).fetchone()[0]
        if idx.exists and idx.rows == train_rows == len(Xtr):
            dataset = store.dataset(source.name).id
            return dict(conn.execute(queries.FIND_IMAGES, (dataset, "train", list(ktr))).fetchall())
    empty_stage(store, stage)
    return load_stage(store, stage, source, "train", ktr, ytr, Xtr).ids


def touch(store: Store, stage: Stage) -> None:
    """Read every stored vector of the stage once (into shared buffers)."""
    with store.connection() as conn:
        conn.execute(statements.touch_vectors(stage.table)).fetchone()
        conn.commit()


def warm(
    store: Store,
    stage: Stage,
    Q: np.ndarray | None = None,
    settings: SearchSettings | None = None,
    dataset: str | None = None,
    split: str = "train",
) -> float:
    """Bring a stage's vectors (and, with queries, its ANN index) into shared buffers, untimed by the
    callers. The first touch of new shared memory can be very slow (a VM may back it lazily), which
    would otherwise be charged to whichever measurement runs first."""
    start = time.perf_counter()
    touch(store, stage)
    if Q is not None:
        run_queries(store, stage, dataset, Q, settings, batch=100, clients=1, split=split, budget_s=BUDGET_S)
    return time.perf_counter() - start


def default_probes(store: Store, stage: Stage, dataset: str | None = None, split: str = "train") -> int:
    """The ivfflat probes a search with default settings uses on the stage's current index."""
    searcher = store.searcher(stage, SearchSettings(), dataset=dataset, against=split)
    return int(dict(searcher.index_settings()).get("ivfflat.probes", 0))


class FakeEncoder:
    """Identifies an embedding space for benchmark vectors that no model produced (random projections
    of the pixels): the bench store's encoder, never asked to encode."""

    name = "bench-projection"
    weights = "none"
    is_random = True
    stages = STAGES


def run_queries(
    store: Store,
    stage: Stage,
    dataset: str | None,
    Q: np.ndarray,
    settings: SearchSettings | None,
    batch: int,
    clients: int = 1,
    split: str = "train",
    budget_s: float | None = None,
):
    """Neighbor ids and labels for the queries answered, their positions in Q, and wall seconds;
    `clients` connections in parallel. With `budget_s`, each client stops after its current
    statement once the budget is spent (the caller reports how many queries were answered)."""
    parts = np.array_split(np.arange(len(Q)), clients)
    results: list = [None] * clients
    cpu = {"client": 0.0, "server": 0.0}
    deadline = time.perf_counter() + budget_s if budget_s else None

    def work(i: int) -> None:
        with store.connection() as conn:
            searcher = store.searcher(stage, settings, dataset=dataset, against=split)
            backend = conn.execute(statements.BACKEND_PID).fetchone()[0]
            conn.commit()
            ids, labels, done = [], [], []
            server0, client0 = _cpu_seconds(backend), time.thread_time()
            for s in range(0, len(parts[i]), batch):
                if deadline and time.perf_counter() > deadline:
                    break
                chunk = parts[i][s : s + batch]
                neigh, _ = searcher.search(conn, Q[chunk])
                ids += [n[0].image_id for n in neigh]
                labels += [n[0].label for n in neigh]
                done += list(chunk)
            cpu["client"] += time.thread_time() - client0
            cpu["server"] += _cpu_seconds(backend) - server0
            results[i] = (ids, labels, done)

    start, process0, machine0 = time.perf_counter(), time.process_time(), _machine_busy_seconds()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    cpu["bench process"] = time.process_time() - process0
    cpu["machine"] = _machine_busy_seconds() - machine0
    LAST_CPU.clear()
    LAST_CPU.update(cpu)
    ids = np.array([x for r in results for x in r[0]])
    labels = np.array([x for r in results for x in r[1]])
    done = np.array([x for r in results for x in r[2]], dtype=np.int64)
    return ids, labels, seconds, done


LAST_CPU: dict[str, float] = {}  # CPU seconds of the last run_queries call, by whom


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...; utime is [11],
    stime [12], cutime [13], cstime [14]); OSError once the process has ended."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a local process (the embedded server's backend); 0 if unknown."""
    try:
        fields = _stat_fields(pid)
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def server_cpu_s(home: Path) -> dict[str, float]:
    """CPU seconds spent so far by each PostgreSQL server whose data directory lies under `home`
    (every node of a local cluster), by data directory relative to `home` ("pgdata" for one node
    or the coordinator): each postmaster's own time, its ended children's (cutime and cstime: a
    backend's time moves there when it exits) and its live children's."""
    procs: dict[int, tuple[int, list[int], bytes]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = _stat_fields(name)
            cmd = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:  # ended while listed
            continue
        procs[int(name)] = (int(fields[1]), [int(x) for x in fields[11:15]], cmd)
    base = home.resolve()  # the servers are started with resolved paths
    roots: dict[int, str] = {}
    for pid, (_, _, cmd) in procs.items():
        args = cmd.split(b"\0")
        if args[0].endswith(b"postgres") and b"-D" in args[:-1]:
            data = Path(os.fsdecode(args[args.index(b"-D") + 1]))
            if data.is_relative_to(base):
                roots[pid] = str(data.relative_to(base))
    tick = os.sysconf("SC_CLK_TCK")
    out = {name: sum(procs[pid][1]) / tick for pid, name in roots.items()}
    for ppid, times, _ in procs.values():
        if ppid in roots:
            out[roots[ppid]] += (times[0] + times[1]) / tick
    return out


def _machine_busy_seconds() -> float:
    """CPU seconds not idle across the machine (all cores), from /proc/stat; 0 if unknown."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def cpu_note() -> str:
    c = LAST_CPU
    other = c.get("bench process", 0) - c.get("client", 0)
    return f"{c.get('client', 0):.1f} / {c.get('server', 0):.1f} / {other:.1f} / {c.get('machine', 0):.1f}"


def time_median(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


STUDY_ACCURACY = {"origin": 70.53, "first": 35.39, "second": 71.5, "third": 77.31}


def fp16_nearest_changes(store: Store, source: Source, n_train: int, n_test: int) -> list[list]:
    """Rows per CLIP stage (second, third): how often rounding the stored and query vectors to float16
    (what halfvec storage does) changes the exact nearest neighbor, and how many of those changes
    are near-ties (the float32 distances within 0.1 %). The vectors are the store's encoder's."""
    stages = parse_stages("second,third")

    def vectors(items):
        images = [it.path if it.path is not None else it.array for it in items]
        return {name: v.astype(np.float64) for name, v in store.embed(images, stages).items()}

    X, Q = vectors(source.items("train")[:n_train]), vectors(source.items("test")[:n_test])
    rows = []
    for stage in stages:
        x, q = X[stage.name], Q[stage.name]
        x16, q16 = x.astype(np.float16).astype(np.float64), q.astype(np.float16).astype(np.float64)
        d32 = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        d16 = ((q16[:, None, :] - x16[None, :, :]) ** 2).sum(-1)
        nn32, nn16 = d32.argmin(1), d16.argmin(1)
        changed = nn32 != nn16
        idx = np.arange(len(q))
        ties = changed & (np.sqrt(d32[idx, nn16]) <= 1.001 * np.sqrt(d32[idx, nn32]))
        rows.append([stage.name, stage.sql_type, len(q), len(x), int(changed.sum()), int(ties.sum())])
    return rows


FP16_HEADER = ["stage", "stored as", "queries", "stored", "1-NN changed by float16", "of which near-ties (< 0.1 %)"]


def run_split(store: Store, dataset: str | None, split: str, Q: np.ndarray, settings: SearchSettings):
    searcher = store.searcher(STAGES["first"], settings, dataset=dataset, against=split)
    with store.connection() as conn:
        start = time.perf_counter()
        ids = []
        for s in range(0, len(Q), 50):
            neigh, _ = searcher.search(conn, Q[s : s + 50])
            ids += [n[0].image_id for n in neigh]
        return np.array(ids), None, time.perf_counter() - start


def find_source(data: str | None, work: Path, quick: bool) -> Source:
    if data:
        path = Path(data)
        if (path / "cifar10-jpeg.tar.gz").exists():
            target = work / "data"
            if not (target / "cifar10").exists():
                target.mkdir(parents=True, exist_ok=True)
                with tarfile.open(path / "cifar10-jpeg.tar.gz") as tar:
                    tar.extractall(target, filter="data")
            return open_source(target / "cifar10")
        return open_source(path)
    if not quick:
        raise SystemExit("the full benchmark needs --data (../shared/data); use --quick for generated data")
    return open_source(synthetic.generate(work / "synthetic", {"train": 200, "test": 20}))


def recall_with_ties(found: np.ndarray, exact: np.ndarray, queries_: np.ndarray, vectors_of) -> float:
    """Recall@1: the share of queries whose found neighbor (a stored index, -1 for none) is the
    exact nearest, or as near as it; both distances computed here the same way, in float64, from
    `vectors_of(indices)`."""
    q = queries_.astype(np.float64)
    ok = found >= 0
    dist = np.full(len(found), np.inf)
    best = ((vectors_of(exact).astype(np.float64) - q) ** 2).sum(1)
    if ok.any():
        dist[ok] = ((vectors_of(found[ok]).astype(np.float64) - q[ok]) ** 2).sum(1)
    return float(np.mean((found == exact) | (dist <= best * (1 + 1e-9))))


def neighbor_sources(conn, run_id: int, stage: str) -> dict[str, str]:
    """Each query image's nearest neighbor in a run, as source keys: {query key: neighbor key}."""
    pairs = conn.execute(statements.RUN_NEIGHBOR_IDS, (run_id, stage)).fetchall()
    ids = sorted({i for pair in pairs for i in pair})
    source = dict(conn.execute(statements.IMAGE_SOURCES, (ids,)).fetchall())
    return {source[q]: source[n] for q, n in pairs}
