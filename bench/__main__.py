"""Benchmarks on real CIFAR-10, always as ratios against a baseline run in the same process.

    python -m bench --data ../shared/data          # full run, rewrites BENCHMARKS.md's items block
    python -m bench --quick                        # small run on generated data (tests use it)

Items: (1) stage-first search: exact, ivfflat, hnsw vs in-process exact 1-NN; (2) bulk load;
(3) encoder throughput per stage vs open_clip's encode_image; (4) the study's table;
(5) scale: query cost and recall as the stored set grows; (6) load: concurrent clients;
(7) accuracy per stage with real weights (--pretrained); (8) vector versus halfvec storage;
(9) half precision and the nearest neighbor at the CLIP stages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench import markdown, statements
from bench.accuracy import item_accuracy
from bench.common import FULL, QUICK, FakeEncoder, Report, find_source, load_pixels
from bench.encoder import item_encoder
from bench.fp16 import item_fp16
from bench.knn import item_knn
from bench.load import item_load
from bench.load_test import item_load_test
from bench.scale_methods import item_scale
from bench.storage import item_storage
from bench.study import item_study
from clipvdb import Store, embedded


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
    store = Store(url, encoder=FakeEncoder(), pool_size=12)  # item 6 runs 8 clients at once
    started = time.perf_counter()
    rep = Report()
    try:
        with store.connection() as conn:
            server, pgv, buffers = conn.execute(statements.SERVER_FACTS).fetchone()
        where = "external server" if os.environ.get("CLIPVDB_BENCH_DATABASE_URL") else "embedded"
        if args.pretrained in (None, "random") or args.model == "tiny":
            weights = "No figure here used real CLIP weights (item 7 takes them with --pretrained)."
        else:
            weights = (
                f"Item 7 used {args.model} weights '{args.pretrained}'; the other items use random "
                "weights or random projections, which do not change their timings."
            )
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        run = "QUICK run on a small subset" if cfg.quick else "full run"
        rep.p(
            f"Measured {dt.date.today()} on {platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
            f"PostgreSQL {server}, pgvector {pgv} ({where}, shared_buffers {buffers}), torch {torch.__version__}, "
            f"{run}; data: {Path(source.location).name}. "
            f"Every speed figure is a ratio against a baseline measured in the same run. {weights}"
        )
        t0 = time.perf_counter()
        needs_pixels = bool(items & {1, 2, 4, 5, 6, 8})
        data = {
            "train": load_pixels(source, "train", cfg.n_train if needs_pixels else 0),
            "test": load_pixels(source, "test", cfg.n_test if needs_pixels else 0),
        }
        rep.p(
            f"Decoded {len(data['train'][0]):,} train and {len(data['test'][0]):,} test images in "
            f"{time.perf_counter() - t0:.1f} s."
        )
        s1 = item_knn(rep, cfg, store, source, data) if items & {1, 4, 5} else {}
        if 2 in items:
            item_load(rep, cfg, store, source, data)
        ips = item_encoder(rep, cfg) if 3 in items or 4 in items else {}
        if 4 in items:
            item_study(rep, cfg, store, source, data, s1, ips)
        if 5 in items:
            item_scale(rep, cfg, store, source, data, s1)
        if 6 in items:
            item_load_test(rep, cfg, store, source, data)
        if args.pretrained:
            n_tr = args.accuracy_train or (200 if cfg.quick else 50_000)
            n_te = args.accuracy_test or (20 if cfg.quick else 10_000)
            item_accuracy(rep, cfg, store, source, args.pretrained, args.model, n_tr, n_te)
        elif not args.append and {1, 2, 3} <= items:  # a full run says why item 7 is missing
            rep.h("7. Accuracy per stage with real weights")
            rep.p(
                "Not run: no CLIP weights were given. Where they are available, run "
                "`python -m bench --data ../shared/data --items 7 --pretrained openai` (or a checkpoint path) "
                "for the study's accuracy table; a GPU makes the 60,000 encodings practical."
            )
        if 8 in items:
            item_storage(rep, cfg, store, source, data)
        if 9 in items:
            item_fp16(rep, cfg, source)
        rep.p(f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s.")
    finally:
        store.close()
        if not os.environ.get("CLIPVDB_BENCH_DATABASE_URL"):
            embedded.stop(home)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.exists():
        out.write_text(out.read_text() + "\n" + rep.text())
    elif out.exists() and "<!-- bench:items -->" in out.read_text():
        markdown.replace_block(out, "items", rep.text())  # the notes written by hand around it stay
    else:
        out.write_text("# clipvdb benchmarks\n\n" + rep.text())
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
