"""Benchmarks on real CIFAR-10, always as ratios against a baseline run in the same process.

    python -m bench --data ../shared/data          # full run, writes BENCHMARKS.md
    python -m bench --quick                        # small run on generated data (tests use it)

Items: (1) stage-first search: exact, ivfflat, hnsw vs in-process exact 1-NN; (2) bulk load;
(3) encoder throughput per stage vs open_clip's encode_image; (4) the study's table;
(5) scale: query cost and recall as the stored set grows; (6) load: concurrent clients;
(7) accuracy per stage with real weights (--pretrained); (8) vector versus halfvec storage;
(9) half precision and the nearest neighbour at the CLIP stages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from psycopg import sql as psql

from clipvdb import Store, catalog, db, embedded, indexes, synthetic
from clipvdb.encoder import run_stages
from clipvdb.images import first_stage_pixels, first_stage_vectors, load_image
from clipvdb.ingest import copy_rows, copy_vectors
from clipvdb.search import SearchSettings, StageSearcher
from clipvdb.sources import Source, open_source
from clipvdb.stages import STAGES, parse_stages

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


FULL = Config(False, 50_000, 10_000, 500, 100, [1, 2, 5, 10], [40, 100, 200], [1, 32, 128], 64,
              [5_000, 20_000, 50_000, 200_000])  # fmt: skip
QUICK = Config(True, 2_000, 200, 100, 20, [1, 5], [40], [1, 4], 8, [500, 2_000])


class Report:
    def __init__(self):
        self.parts: list[str] = []

    def h(self, text: str) -> None:
        self.parts.append(f"\n## {text}\n")
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


# ------------------------------------------------------------------ data


def load_pixels(source: Source, split: str, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    items = source.items(split)[:n]
    if not items:
        return np.empty((0, 3072), np.float32), np.array([], dtype=int), []
    pixels = np.stack([first_stage_pixels(load_image(it.path, it.key)) if it.path is not None else it.array
                       for it in items])  # fmt: skip
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


def load_stage(url: str, stage, source: Source, split: str, keys, labels, X: np.ndarray, space_lm=None,
               batch: int = 5000, index: tuple[str, dict] | None = None) -> tuple[dict[str, int], float, float]:  # fmt: skip
    """Image rows, then vectors by binary COPY, a transaction per batch, then an index (default: the
    stage's default). Returns key->id, seconds for the vectors alone, seconds for the index build."""
    with db.open_db(url) as conn:
        ds = catalog.register_dataset(conn, source)
        space = catalog.get_or_create_space(conn, stage, space_lm)
        ids: dict[str, int] = {}
        for s in range(0, len(keys), batch):
            ids.update(catalog.upsert_images(conn, ds, split, [(k, int(y), bytes(32)) for k, y in
                                                               zip(keys[s:s + batch], labels[s:s + batch], strict=True)]))  # fmt: skip
            conn.commit()
        indexes.drop(conn, stage)
        conn.commit()
        start = time.perf_counter()
        for s in range(0, len(keys), batch):
            copy_vectors(conn, stage, space, [ids[k] for k in keys[s : s + batch]], X[s : s + batch], ds, split)
            conn.commit()
        load_s = time.perf_counter() - start
        kind, params = index or indexes.default_index(stage)
        start = time.perf_counter()
        indexes.build(conn, stage, kind, project=params.get("project"))
        index_s = time.perf_counter() - start
    return ids, load_s, index_s


def ensure_first_loaded(url: str, source: Source, data: dict) -> None:
    """The whole training set at stage first with its default index (item 2 leaves 20,000 rows)."""
    Xtr, ytr, ktr = data["train"]
    stage = STAGES["first"]
    with db.open_db(url) as conn:
        idx = indexes.info(conn, stage)
        train_rows = conn.execute("SELECT count(*) FROM embeddings_first WHERE split = 'train'").fetchone()[0]
        if idx.exists and idx.rows == train_rows == len(Xtr):
            return
        conn.execute("TRUNCATE embeddings_first CASCADE")
        conn.commit()
    load_stage(url, stage, source, "train", ktr, ytr, Xtr)


def warm(url: str, stage, queries: np.ndarray | None = None, settings=None, dataset=None, split="train") -> float:
    """Bring a stage's vectors (and, with queries, its ANN index) into shared buffers, untimed by the
    callers. On this machine the first touch of new shared memory is very slow (the VM backs it
    lazily), which would otherwise be charged to whichever measurement runs first."""
    start = time.perf_counter()
    with db.open_db(url) as conn:
        conn.execute(f"SELECT sum(vector_dims(embedding)) FROM {stage.table}").fetchone()
        conn.commit()
    if queries is not None:
        run_queries(url, stage, None, dataset, queries, settings, batch=100, clients=1, split=split, budget_s=BUDGET_S)
    return time.perf_counter() - start


class FakeLM:
    """Identifies an embedding space for benchmark vectors that no model produced."""

    name = "bench-projection"
    weights = "none"


def run_queries(url, stage, lm, dataset, Q, settings, batch: int, clients: int = 1, split: str = "train",
                budget_s: float | None = None):  # fmt: skip
    """Neighbour ids and labels for the queries answered, their positions in Q, and wall seconds;
    `clients` connections in parallel. With `budget_s`, each client stops after its current
    statement once the budget is spent (the caller reports how many queries were answered)."""
    parts = np.array_split(np.arange(len(Q)), clients)
    results: list = [None] * clients
    cpu = {"client": 0.0, "server": 0.0}
    deadline = time.perf_counter() + budget_s if budget_s else None

    def work(i: int) -> None:
        with db.open_db(url) as conn:
            searcher = StageSearcher(conn, stage, catalog.space_identity(stage, lm), dataset, split, settings)
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
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


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a local process (the embedded server's backend); 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _machine_busy_seconds() -> float:
    """CPU seconds not idle across the machine (all cores), from /proc/stat; 0 if unknown."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def cpu_note() -> str:
    c = LAST_CPU
    return (f"{c.get('client', 0):.1f} / {c.get('server', 0):.1f} / "
            f"{c.get('bench process', 0) - c.get('client', 0):.1f} / {c.get('machine', 0):.1f}")  # fmt: skip


# ------------------------------------------------------------------ items


def item_search(rep: Report, cfg: Config, url: str, source: Source, data: dict) -> dict:
    Xtr, ytr, ktr = data["train"]
    Xte, yte, _ = data["test"]
    stage = STAGES["first"]
    rep.h(f"1. Stage first: {len(Xtr):,} stored, {len(Xte):,} queries")
    nearest, base_s = exact_baseline(Xtr, Xte)
    base_acc = float((ytr[nearest] == yte).mean())
    rep.p(f"Baseline (in-process exact 1-NN, torch matrix products): accuracy {100 * base_acc:.2f} %, "
          f"{base_s:.1f} s for all {len(Xte):,} queries ({1000 * base_s / len(Xte):.2f} ms/query).")  # fmt: skip
    ids, load_s, ivf_s = load_stage(url, stage, source, "train", ktr, ytr, Xtr, index=("ivfflat", {}))
    id_of = np.array([ids[k] for k in ktr])
    with db.open_db(url) as conn:
        dataset = catalog.dataset_id(conn, source.name)
        lists = indexes.info(conn, stage).params["lists"]
        ivf_size = indexes.info(conn, stage).size_bytes
    rows = []
    nq = min(cfg.n_query, len(Xte))

    def measure(label, settings, batch, clients=1, n=nq, build_s=None, size=None, budget=BUDGET_S):
        ids_, labels_, secs, done = run_queries(url, stage, None, dataset, Xte[:n], settings, batch, clients,
                                                budget_s=budget)  # fmt: skip
        m = len(done)
        recall = float((ids_ == id_of[nearest[done]]).mean())
        acc = float((labels_ == yte[done]).mean())
        base_m = base_s * m / len(Xte)
        note = "" if m == n else f" (stopped at the {budget:.0f} s budget)"
        rows.append([label + note, batch, clients, m, 100 * acc, recall, 1000 * secs / m, m / secs, secs / base_m,
                     "" if build_s is None else f"{build_s:.1f}", "" if size is None else f"{size / 2**20:.0f}",
                     cpu_note()])  # fmt: skip
        return acc, recall, secs * n / m, m

    def build(kind, **kw):
        with db.open_db(url) as conn:
            start = time.perf_counter()
            info = indexes.build(conn, stage, kind, **kw)
            return info, time.perf_counter() - start

    ne = min(cfg.n_exact_db, nq)
    warm_s = warm(url, stage, Xte[:nq], SearchSettings(probes=max(cfg.probes)), dataset)
    measure("pgvector exact (l2_distance scan)", SearchSettings(exact=True), 1, n=ne)
    for p in cfg.probes:
        measure(f"ivfflat lists={lists} probes={p}", SearchSettings(probes=p), 1,
                build_s=ivf_s if p == cfg.probes[0] else None, size=ivf_size if p == cfg.probes[0] else None)  # fmt: skip
    ef_full = 100 if 100 in cfg.ef_search else cfg.ef_search[-1]
    full = {}  # (label, clients, batch) -> (accuracy, recall, seconds for all, answered)
    # hnsw on the full 3,072-d vectors, then hnsw on their 128-d PCA projection with an exact re-rank
    # of the candidates (the default for stage first); each with the whole test set at the end.
    for name, kw in (("hnsw", {}), ("projected hnsw", {"project": 128})):
        info, build_s = build("hnsw", m=16, ef_construction=64, **kw)
        label = f"{name} m=16 efc=64" + (f" project=128 (variance kept {info.params['variance_kept']:.3f})"
                                           if kw else "")  # fmt: skip
        warm_s += warm(url, stage, Xte[:nq], SearchSettings(ef_search=max(cfg.ef_search)), dataset)
        for ef in cfg.ef_search:
            first = ef == cfg.ef_search[0]
            measure(f"{label} ef_search={ef}", SearchSettings(ef_search=ef), 1,
                    build_s=build_s if first else None, size=info.size_bytes if first else None)  # fmt: skip
        passes = ((1, 100), (2, 100)) if not kw else ((1, 1), (1, 100), (2, 100))
        for clients, batch in passes:
            full[(f"{name} ef_search={ef_full}", clients, batch)] = measure(
                f"{name} ef_search={ef_full}, all queries", SearchSettings(ef_search=ef_full), batch, clients,
                n=len(Xte))  # fmt: skip
    # the stage-first default since session 3: ivfflat over the projection (rows/200 lists, lists/25 probes)
    info, build_s = build("ivfflat", project=128)
    plists = int(info.params["lists"])
    default_p = indexes.default_probes(plists, projected=True)
    warm_s += warm(url, stage, Xte[:nq], SearchSettings(), dataset)
    for p in sorted({max(1, plists // 50), default_p, max(1, plists // 12)}):
        measure(f"projected ivfflat lists={plists} project=128 probes={p}", SearchSettings(probes=p), 1,
                build_s=build_s if p == max(1, plists // 50) else None, size=info.size_bytes)  # fmt: skip
    for clients, batch in ((1, 100), (2, 100)):
        full[(f"projected ivfflat probes={default_p}", clients, batch)] = measure(
            f"projected ivfflat probes={default_p} (default), all queries", SearchSettings(), batch, clients,
            n=len(Xte))  # fmt: skip
    rep.p(f"Bulk load for this table: {len(Xtr):,} vectors by COPY binary in {load_s:.1f} s "
          f"({len(Xtr) / load_s:,.0f} vectors/s). Untimed warm-up before each index's rows (vectors and index "
          f"into shared buffers): {warm_s:.0f} s in all. 'projected' = hnsw over each vector's 128 principal "
          "components (fitted on the stored rows, in projections_first), then the 20 candidates re-ranked by "
          "the exact distance on the stored halfvec(3072) vectors, in the same statement.")  # fmt: skip
    rep.p("The last column says where the CPU went during each pass, in CPU seconds: the client threads, the "
          "server backends serving them, the rest of the bench process, and the whole machine (2 cores: at most "
          "twice the wall time).")  # fmt: skip
    rep.table(["method", "batch", "clients", "queries", "accuracy %", "recall@1", "ms/query", "queries/s",
               "time / baseline time", "build s", "index MiB", "CPU s: client / server / other in bench / machine"],
              rows)  # fmt: skip
    ok = {k: v for k, v in full.items() if v[0] >= 0.99 * base_acc and v[3] == len(Xte)}
    pool = ok or full
    (label, clients, batch), (acc, recall, secs, m) = min(pool.items(), key=lambda kv: kv[1][2])
    how = "all answered" if m == len(Xte) else f"{m:,} answered within the budget, time extrapolated to all"
    verdict = "met" if ok and secs <= base_s else "not met"
    rep.p(f"Goal check ({verdict}): fastest full pass {'at >= 99 % of exact accuracy' if ok else '(none reached 99 % of exact accuracy)'}: "
          f"{label}, {clients} client(s), batch {batch} ({how}): accuracy {100 * acc:.2f} % = {acc / base_acc:.3f} "
          f"of exact; wall time {secs:.1f} s = {secs / base_s:.2f} x the in-process exact baseline ({base_s:.1f} s).")  # fmt: skip
    return {"base_acc": base_acc, "base_s": base_s, "dataset": dataset, "id_of": id_of, "nearest": nearest,
            "load_s": load_s, "lists": lists}  # fmt: skip


def item_load(rep: Report, cfg: Config, url: str, source: Source, data: dict) -> None:
    Xtr, ytr, ktr = data["train"]
    n = min(len(Xtr), 20_000 if not cfg.quick else len(Xtr))
    rep.h(f"2. Bulk load: COPY binary, {n:,} vectors per stage table")
    rng = np.random.default_rng(0)
    rows = []
    for name in ("first", "second", "third", "origin"):
        stage = STAGES[name]
        if stage.dim == 3072:
            X = Xtr[:n]
        else:
            X = (Xtr[:n] @ rng.standard_normal((3072, stage.dim), dtype=np.float32) / 55).astype(np.float32)
        with db.open_db(url) as conn:
            conn.execute(f"TRUNCATE {stage.table} CASCADE")
            conn.commit()
        _, load_s, index_s = load_stage(
            url, stage, source, "train", ktr[:n], ytr[:n], X, FakeLM() if stage.uses_clip else None
        )
        kind, params = indexes.default_index(stage)
        label = kind + (f" project={params['project']}" if params.get("project") else "")
        rows.append([name, stage.sql_type, n, load_s, n / load_s, label, index_s, n / (load_s + index_s)])
    rep.p("Vectors only (image rows exist); 5,000 vectors per transaction; first uses the real pixels, the "
          "others random projections of them (load cost depends on size, not values). Index: the stage's default "
          "(for first: PCA fit, projections written, hnsw built).")  # fmt: skip
    rep.table(["stage", "column", "vectors", "load s", "vectors/s", "default index", "index build s",
               "vectors/s incl. index"], rows)  # fmt: skip
    with db.open_db(url) as conn:
        for name in ("second", "third", "origin"):
            conn.execute(f"TRUNCATE {STAGES[name].table} CASCADE")
        conn.commit()


def _time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def item_encoder(rep: Report, cfg: Config) -> dict[str, float]:
    from clipvdb.models import load_model

    rep.h("3. Encoder: images/s per stage on CPU, random RN50 weights, vs open_clip encode_image")
    lm = load_model("RN50", "random", "cpu", quiet=True)
    threads = torch.get_num_threads()
    rows, ips32 = [], {}
    for bs in cfg.enc_batches:
        x = torch.randn(bs, 3, 224, 224)
        reps = max(3, cfg.enc_images // bs) if bs < 32 else (3 if bs <= 32 else 2)
        if cfg.quick:
            reps = 2
        fns = {
            "encode_image": lambda: lm.model.encode_image(x),
            "origin": lambda: run_stages(lm.visual, x, [STAGES["origin"]], lm.device),
            "second": lambda: run_stages(lm.visual, x, [STAGES["second"]], lm.device),
            "third": lambda: run_stages(lm.visual, x, [STAGES["third"]], lm.device),
            "all four": lambda: run_stages(lm.visual, x, parse_stages("all"), lm.device),
        }
        fns["encode_image"]()  # warm-up
        t = {k: _time(f, reps) for k, f in fns.items()}
        base = t["encode_image"]
        for k in fns:
            rows.append([bs, k, bs / t[k], t[k] / base, t[k] / t["origin"]])
            if bs == max(b for b in cfg.enc_batches if b <= 32):
                ips32[k] = bs / t[k]
    rep.p(f"torch {torch.__version__}, {threads} threads; median of repeated batches; timing is independent of "
          "the weights' values. Goals: origin < 1.05 x encode_image; second <= 0.75 x origin; all four <= 1.1 x origin.")  # fmt: skip
    rep.table(["batch", "path", "images/s", "time / encode_image", "time / origin"], rows)
    # channels_last and bfloat16 autocast, tried at one batch size
    bs = cfg.enc_batches[-1] if cfg.quick else 32
    x = torch.randn(bs, 3, 224, 224)
    # the baseline is float32 NCHW; load_model's CPU default is channels_last
    lm.visual.to(memory_format=torch.contiguous_format)
    ref = lm.model.encode_image(x)
    base = _time(lambda: lm.model.encode_image(x), 3)
    lm.visual.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    cl_out = lm.model.encode_image(xc)
    cl = _time(lambda: lm.model.encode_image(xc), 3)
    lm.visual.to(memory_format=torch.contiguous_format)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf_out = lm.model.encode_image(x).float()
        bf = _time(lambda: lm.model.encode_image(x), 3)
    rel = lambda a: float((a - ref).norm() / ref.norm())  # noqa: E731
    rows = [["channels_last", cl / base, rel(cl_out)], ["bfloat16 autocast", bf / base, rel(bf_out)]]
    # a frozen inference graph: TorchScript trace, freeze (constants folded, conv + batch norm merged),
    # optimize_for_inference (oneDNN fusion where available), channels_last input
    lm.visual.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode(False), torch.no_grad():
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(lm.visual.eval(), xc)))
            frozen(xc)
            fr_out = frozen(xc)
            fr = _time(lambda: frozen(xc), 3)
        rows.append(["frozen TorchScript (conv+bn folded, optimize_for_inference)", fr / base, rel(fr_out)])
    except Exception as exc:  # report the failure, do not stop the bench
        rows.append([f"frozen TorchScript: failed ({exc.__class__.__name__})", "", ""])
    rep.p("A variant is adopted only if its embeddings stay within 1e-5 relative of encode_image: channels_last "
          "is the CPU default; the others are measured and reported, not used.")  # fmt: skip
    rep.table([f"variant (batch {bs})", "time / float32 NCHW", "relative error"], rows)
    return ips32


def item_study(rep: Report, cfg: Config, url: str, source: Source, data: dict, s1: dict, ips: dict) -> None:
    Xtr, ytr, ktr = data["train"]
    Xte = data["test"][0]
    n = min(1000, len(Xte))
    rep.h(f"4. The study's table: {n:,} test images per stage")
    rng = np.random.default_rng(1)
    rows = []
    ensure_first_loaded(url, source, data)
    for name in ("origin", "first", "second", "third"):
        stage = STAGES[name]
        enc_s = None if name == "first" else n / ips[name]  # stage first runs no encoder
        if name == "origin":
            q_s = None  # zero-shot: one matrix product against 10 prompts, not a database query
        else:
            if name == "first":
                Q, lm = Xte[:n], None
            else:
                P = rng.standard_normal((3072, stage.dim), dtype=np.float32) / 55
                with db.open_db(url) as conn:
                    conn.execute(f"TRUNCATE {stage.table} CASCADE")
                    conn.commit()
                load_stage(url, stage, source, "train", ktr, ytr, (Xtr @ P).astype(np.float32), FakeLM())
                Q, lm = (Xte[:n] @ P).astype(np.float32), FakeLM()
                with db.open_db(url) as conn:
                    conn.execute(f"SELECT sum(vector_dims(embedding)) FROM {stage.table}").fetchone()
            with db.open_db(url) as conn:
                kind = indexes.info(conn, stage).kind
            settings = SearchSettings(ef_search=100) if kind == "hnsw" else SearchSettings()
            _, _, q_s, done = run_queries(url, stage, lm, s1["dataset"], Q, settings, batch=100, clients=2,
                                          budget_s=BUDGET_S)  # fmt: skip
            q_s = q_s * len(Q) / max(len(done), 1)
        se, sq = STUDY[name]
        total = (enc_s or 0.0) + (q_s or 0.0)
        rows.append([name, "none" if enc_s is None else enc_s, "not a query" if q_s is None else q_s,
                     f"{se:.0f} + {sq:.0f}", total / (se + sq)])  # fmt: skip
    rep.p("Encoder seconds from item 3's images/s at batch 32 (CPU, 2 cores); query seconds measured here for "
          f"{n:,} queries against {len(Xtr):,} stored vectors (batches of 100, 2 connections). Stages second and third "
          "store random projections of the pixels (real weights are not available here): query cost depends on "
          "size and index, not on which model made the vectors. The study: a laptop and a hosted vector database.")  # fmt: skip
    rep.table(["stage", "encoder s", "query s", "study s (encoder + query)", "our total / study total"], rows)


def item_scale(rep: Report, cfg: Config, url: str, source: Source, data: dict, s1: dict) -> None:
    Xtr, ytr, ktr = data["train"]
    Xte = data["test"][0]
    rep.h("5. Scale: query cost and recall@1 as the stored set grows (stage first)")
    nq = min(200 if not cfg.quick else 50, len(Xte))
    Q = Xte[:nq]
    rng = np.random.default_rng(2)
    rows = []
    for size in cfg.scale_sizes:
        reps = -(-size // len(Xtr))
        X = np.concatenate([Xtr] + [np.clip(Xtr + rng.normal(0, 0.01, Xtr.shape).astype(np.float32), 0, 1)
                                    for _ in range(reps - 1)])[:size]  # fmt: skip
        keys = [f"{k}#{r}" for r in range(reps) for k in ktr][:size]
        labels = np.concatenate([ytr] * reps)[:size]
        with db.open_db(url) as conn:
            conn.execute("TRUNCATE embeddings_first CASCADE")
            conn.commit()
        ids, load_s, ivf_s = load_stage(url, STAGES["first"], source, f"scale{size}", keys, labels, X,
                                        index=("ivfflat", {}))  # fmt: skip
        nearest, base_s = exact_baseline(X, Q)
        id_of = np.array([ids[k] for k in keys])
        with db.open_db(url) as conn:
            dataset = catalog.dataset_id(conn, source.name)
            lists = indexes.info(conn, STAGES["first"]).params["lists"]

        def go(label, settings, n=nq):
            searcher_split = f"scale{size}"
            ids_, _, secs = _run_split(url, dataset, searcher_split, Q[:n], settings)
            recall = float((ids_ == id_of[nearest[:n]]).mean())
            rows.append([size, label, recall, 1000 * secs / n, (secs / n) / (base_s / nq)])

        warm(url, STAGES["first"], Q, SearchSettings(), dataset, f"scale{size}")
        go("exact", SearchSettings(exact=True), n=min(nq, 20 if size >= 50_000 else nq))
        go(f"ivfflat lists={lists} probes={indexes.default_probes(lists)} (build {ivf_s:.0f} s)", SearchSettings())
        variants = [("hnsw", {}), ("projected hnsw, project=128", {"project": 128})]
        for name, kw in variants if size <= 50_000 else variants[1:]:
            with db.open_db(url) as conn:
                start = time.perf_counter()
                indexes.build(conn, STAGES["first"], "hnsw", **kw)
                hs = time.perf_counter() - start
            warm(url, STAGES["first"], Q, SearchSettings(ef_search=100), dataset, f"scale{size}")
            go(f"{name} ef_search=100 (build {hs:.0f} s)", SearchSettings(ef_search=100))
    rep.p(f"{nq} queries per row (exact at 50k and above: 20), batches of 50, after an untimed warm-up. Sizes above "
          "50,000 repeat the training set with Gaussian noise (sigma 0.01); hnsw on the full vectors is built up to "
          "50,000 only (its build time above that does not fit this run's 45-minute budget on 2 cores). Build "
          "times include, for the projected index, the PCA fit and writing the projections. Baseline: in-process "
          "exact search over the same array, per query.")  # fmt: skip
    rep.table(["stored", "method", "recall@1", "ms/query", "time / in-process exact"], rows)


def item_load_test(rep: Report, cfg: Config, url: str, source: Source, data: dict) -> dict:
    """Bounded load: N concurrent clients classify single images at stage first for a fixed time."""
    Xte = data["test"][0]
    clients, seconds = (8, 60.0) if not cfg.quick else (2, 3.0)
    rep.h(f"6. Load: {clients} concurrent clients classifying for {seconds:.0f} s (stage first, default index)")
    ensure_first_loaded(url, source, data)
    with db.open_db(url) as conn:
        idx = indexes.info(conn, STAGES["first"])
        dataset = catalog.dataset_id(conn, source.name)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds

    def client(i: int) -> None:
        rng = np.random.default_rng(i)
        try:
            with db.open_db(url) as conn:
                searcher = StageSearcher(
                    conn,
                    STAGES["first"],
                    catalog.space_identity(STAGES["first"], None),
                    dataset,
                    "train",
                    SearchSettings(),
                )
                conn.commit()
                while time.perf_counter() < stop_at:
                    q = Xte[rng.integers(len(Xte)) : None][:1]
                    t0 = time.perf_counter()
                    neigh, _ = searcher.search(conn, q)
                    latencies[i].append((time.perf_counter() - t0) * 1000)
                    if len(neigh[0]) != 1:
                        errors.append("no neighbour returned")
        except Exception as exc:  # counted, not raised: the load test reports errors
            errors.append(f"{exc.__class__.__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    lat = np.array([x for part in latencies for x in part])
    rep.p(f"Python clients, one connection each, over the embedded server's unix socket; index {idx.kind} "
          f"{idx.params}; {idx.rows:,} stored vectors. Bounded: {seconds:.0f} s, then every client stops.")  # fmt: skip
    rep.table(["clients", "queries", "queries/s", "p50 ms", "p95 ms", "max ms", "errors"],
              [[clients, len(lat), len(lat) / seconds, float(np.percentile(lat, 50)) if len(lat) else 0.0,
                float(np.percentile(lat, 95)) if len(lat) else 0.0, float(lat.max()) if len(lat) else 0.0,
                len(errors)]])  # fmt: skip
    for e in errors[:5]:
        rep.p(f"error: {e}")
    return {"queries": len(lat), "errors": len(errors)}


def item_storage(rep: Report, cfg: Config, url: str, source: Source, data: dict) -> None:
    """Stage first stored as vector(3072) (TOASTed; before migration 0004) against halfvec(3072) in
    line (now): COPY speed, exact-scan time, recall, size."""
    Xtr, _, ktr = data["train"]
    Xte = data["test"][0]
    nq = min(100 if not cfg.quick else 20, len(Xte))
    rep.h(f"8. Storage: vector(3072) against halfvec(3072) for stage first, {len(Xtr):,} rows")
    nearest, base_s = exact_baseline(Xtr, Xte[:nq])
    ensure_first_loaded(url, source, data)
    rows = []
    with db.open_db(url) as conn:
        id_of = dict(conn.execute("SELECT i.source, i.id FROM images i WHERE i.split = 'train'").fetchall())
        ids = [id_of[k] for k in ktr]
        truth = np.array([ids[j] for j in nearest])
        for column, storage in (("vector(3072)", "EXTERNAL"), ("halfvec(3072)", "PLAIN")):
            kind = column.split("(")[0]
            table = f"storage_{kind}"
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} (image_id bigint PRIMARY KEY, embedding {column} NOT NULL)")
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE {storage}")
            conn.commit()
            start = time.perf_counter()
            for s in range(0, len(Xtr), 5000):
                copy_rows(conn, psql.SQL("COPY {} (image_id, embedding) FROM STDIN WITH (FORMAT BINARY)").format(
                              psql.Identifier(table)), ["int8", kind],
                      ((ids[i], db.as_param(Xtr[i], kind)) for i in range(s, min(len(Xtr), s + 5000))))  # fmt: skip
                conn.commit()
            load_s = time.perf_counter() - start
            conn.execute(f"SELECT sum(vector_dims(embedding)) FROM {table}").fetchone()  # warm
            sql = f"SELECT image_id FROM {table} ORDER BY l2_distance(embedding, %s::vector::{column}) LIMIT 1"
            got, start = [], time.perf_counter()
            for q in Xte[:nq]:
                got.append(conn.execute(sql, (q,)).fetchone()[0])
            secs = time.perf_counter() - start
            conn.commit()
            size = conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()[0]
            rows.append([f"{column}, storage {storage.lower()}", len(Xtr) / load_s, nq,
                         float((np.array(got) == truth).mean()), 1000 * secs / nq, (secs / nq) / (base_s / nq),
                         f"{size / 2**20:,.0f}"])  # fmt: skip
            conn.execute(f"DROP TABLE {table}")
            conn.commit()
    rows[1].append(f"load {rows[1][1] / rows[0][1]:.2f} x, scan {rows[1][4] / rows[0][4]:.2f} x")
    rows[0].append("baseline")
    rep.p(f"Both tables loaded in this run by COPY binary, 5,000 rows per transaction; then exact scans (function "
          f"form, no index), {nq} queries, after an untimed warm-up; recall@1 against in-process float32 exact "
          f"search (baseline {1000 * base_s / nq:.2f} ms/query). halfvec in line is what migration 0004 made of "
          "stages first and third.")  # fmt: skip
    rep.table(["storage", "COPY vectors/s", "queries", "recall@1", "ms/query", "time / in-process exact",
               "table MiB", "halfvec / vector"], rows)  # fmt: skip


STUDY_ACCURACY = {"origin": 70.53, "first": 35.39, "second": 71.5, "third": 77.31}


def item_accuracy(rep: Report, cfg: Config, url: str, source: Source, pretrained: str, model: str,
                  n_train: int, n_test: int) -> None:  # fmt: skip
    """The study's accuracy table with real weights: ingest every stage, evaluate, compare."""
    from clipvdb.encoders import load_encoder

    lm = load_encoder(model, pretrained, None, quiet=True)
    store = Store(url, encoder=lm)
    rep.h(f"7. Accuracy per stage with {model} weights '{lm.weights}': {n_train:,} stored, {n_test:,} queries")
    start = time.perf_counter()
    store.ingest(source, "all", split="train", limit=n_train, dataset="accuracy")
    ingest_s = time.perf_counter() - start
    result = store.evaluate(source, "all", split="test", num=n_test, dataset="accuracy")
    real = not lm.is_random
    rep.p(f"Device {lm.device}; ingest {ingest_s:.0f} s; evaluate run {result.run_id}; default index settings. "
          + ("Measured WITH REAL WEIGHTS." if real else "RANDOM weights: these accuracies say nothing about CLIP."))  # fmt: skip
    rows = [[name, t.n, t.accuracy, STUDY_ACCURACY[name], t.accuracy - STUDY_ACCURACY[name], t.encode_ms / 1000,
             t.query_ms / 1000] for name, t in result.stages.items()]  # fmt: skip
    rep.table(["stage", "queries", "accuracy %", "study %", "difference", "encoder s", "query s"], rows)
    n_fp = (min(n_train, 1000), min(n_test, 100))
    rep.p(f"Half precision and the nearest neighbour with these weights ({n_fp[0]:,} stored, {n_fp[1]:,} queries):")
    rep.table(FP16_HEADER, fp16_nearest_changes(lm, source, *n_fp))


def fp16_nearest_changes(encoder, source: Source, n_train: int, n_test: int) -> list[list]:
    """Rows per CLIP stage (second, third): how often rounding the stored and query vectors to float16
    (what halfvec storage does) changes the exact nearest neighbour, and how many of those changes
    are near-ties (the float32 distances within 0.1 %)."""
    from clipvdb.encoding import encode_items

    stages = parse_stages("second,third")

    def vectors(items):
        parts: dict[str, list] = {s.name: [] for s in stages}
        for b in encode_items(items, stages, encoder, batch_size=32, hash_items=False):
            for name in parts:
                parts[name].append(b.vectors[name])
        return {name: np.concatenate(v).astype(np.float64) for name, v in parts.items()}

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


def item_fp16(rep: Report, cfg: Config, source: Source) -> None:
    from clipvdb.encoders import load_encoder

    n_train, n_test = (40, 10) if cfg.quick else (1000, 100)
    rep.h(f"9. Half precision and the nearest neighbour at the CLIP stages ({n_train:,} stored, {n_test:,} queries)")
    encoder = load_encoder("RN50", "random", "cpu", quiet=True)
    start = time.perf_counter()
    rows = fp16_nearest_changes(encoder, source, n_train, n_test)
    rep.p(f"RN50 with RANDOM weights (seed 0), exact 1-NN in numpy, float32 against both sides rounded to float16 "
          f"as halfvec stores them; {time.perf_counter() - start:.0f} s. Stage third is stored as halfvec; stage "
          "second is vector(1024) and is shown for comparison. Stage first: item 8. With real weights, item 7 "
          "reports the same table.")  # fmt: skip
    rep.table(FP16_HEADER, rows)


def _run_split(url, dataset, split, Q, settings):
    with db.open_db(url) as conn:
        searcher = StageSearcher(
            conn, STAGES["first"], catalog.space_identity(STAGES["first"], None), dataset, split, settings
        )
        conn.commit()
        start = time.perf_counter()
        ids = []
        for s in range(0, len(Q), 50):
            neigh, _ = searcher.search(conn, Q[s : s + 50])
            ids += [n[0].image_id for n in neigh]
        return np.array(ids), None, time.perf_counter() - start


# ------------------------------------------------------------------ main


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


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="../shared/data (the CIFAR-10 JPEG archive) or a source folder")
    ap.add_argument("--quick", action="store_true", help="small subset; checks that the code runs")
    ap.add_argument("--out", help="report path (default BENCHMARKS.md; --quick: bench-out/BENCHMARKS-quick.md)")
    ap.add_argument("--work", default="bench-out", help="scratch folder (database, extracted data)")
    ap.add_argument("--items", default="1,2,3,4,5,6,8,9", help="which items to run (7 runs when --pretrained is given)")
    ap.add_argument("--pretrained", help="weights for item 7, the accuracy table: openai, a checkpoint path, random")
    ap.add_argument("--model", default="RN50")
    ap.add_argument("--append", action="store_true", help="append the items' sections to the report")
    ap.add_argument("--accuracy-train", type=int, help="item 7: stored images (default 50,000)")
    ap.add_argument("--accuracy-test", type=int, help="item 7: queries (default 10,000)")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    items = {int(x) for x in args.items.split(",")}
    out = Path(args.out or (work / "BENCHMARKS-quick.md" if args.quick else "BENCHMARKS.md"))
    source = find_source(args.data, work, args.quick)
    home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    url = os.environ.get("CLIPVDB_BENCH_DATABASE_URL") or embedded.start(home)
    db.upgrade(url)
    started = time.perf_counter()
    rep = Report()
    try:
        with db.connection(url, vector=False) as conn:
            server = conn.execute("SHOW server_version").fetchone()[0]
            pgv = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
            buffers = conn.execute("SHOW shared_buffers").fetchone()[0]
        where = "external server" if os.environ.get("CLIPVDB_BENCH_DATABASE_URL") else "embedded"
        if args.pretrained in (None, "random") or args.model == "tiny":
            weights = "No figure here used real CLIP weights: none can be downloaded on this machine."
        else:
            weights = (f"Item 7 used {args.model} weights '{args.pretrained}'; the other items use random "
                       "weights or random projections, which do not change their timings.")  # fmt: skip
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        if not args.append:
            rep.parts.append("# clipvdb benchmarks\n")
        rep.p(f"Measured {dt.date.today()} on {platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
              f"PostgreSQL {server}, pgvector {pgv} ({where}, shared_buffers {buffers}), torch {torch.__version__}, "
              f"{'QUICK run on a small subset' if cfg.quick else 'full run'}; data: {source.location}. "
              f"Every speed figure is a ratio against a baseline measured in the same run. {weights}")  # fmt: skip
        t0 = time.perf_counter()
        needs_pixels = bool(items & {1, 2, 4, 5, 6, 8})
        data = {"train": load_pixels(source, "train", cfg.n_train if needs_pixels else 0),
                "test": load_pixels(source, "test", cfg.n_test if needs_pixels else 0)}  # fmt: skip
        rep.p(f"Decoded {len(data['train'][0]):,} train and {len(data['test'][0]):,} test images in "
              f"{time.perf_counter() - t0:.1f} s.")  # fmt: skip
        s1 = item_search(rep, cfg, url, source, data) if items & {1, 4, 5} else {}
        if 2 in items:
            item_load(rep, cfg, url, source, data)
        ips = item_encoder(rep, cfg) if 3 in items or 4 in items else {}
        if 4 in items:
            item_study(rep, cfg, url, source, data, s1, ips)
        if 5 in items:
            item_scale(rep, cfg, url, source, data, s1)
        if 6 in items:
            item_load_test(rep, cfg, url, source, data)
        if 8 in items:
            item_storage(rep, cfg, url, source, data)
        if 9 in items:
            item_fp16(rep, cfg, source)
        if args.pretrained:
            n_tr = args.accuracy_train or (200 if cfg.quick else 50_000)
            n_te = args.accuracy_test or (20 if cfg.quick else 10_000)
            item_accuracy(rep, cfg, url, source, args.pretrained, args.model, n_tr, n_te)
        elif not args.append:
            rep.h("7. Accuracy per stage with real weights")
            rep.p("Not run: no CLIP weights on this machine. Where they are available, run "
                  "`python -m bench --data ../shared/data --items 7 --pretrained openai` (or a checkpoint path) "
                  "for the study's accuracy table; a GPU makes the 60,000 encodings practical.")  # fmt: skip
        rep.p(f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s.")
    finally:
        if not os.environ.get("CLIPVDB_BENCH_DATABASE_URL"):
            embedded.stop(home)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.exists():
        out.write_text(out.read_text() + "\n" + rep.text())
    else:
        out.write_text(rep.text())
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
