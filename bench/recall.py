"""Recall@1 and query time of stage first's projected index, per setting (a secondary measurement:
the library's search on one connection, not a command a user types; bench/headline.py times those).

    python -m bench.recall --data .cache/data/cifar10 --project 64 --lists 500 probes=16 probes=25 probes=25,candidates=10

Stores the training split at stage first in a fresh embedded home, builds the projected ivfflat
index asked for, and answers the test images in batches of 100 on one connection for each setting
(SearchSettings fields as name=value). Recall@1 is against the exact 1-NN over the same pixel
arrays, computed in process; ivfflat's k-means differs from build to build, so accuracy moves by
0.1-0.2 points between builds where recall does not.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import exact_baseline, load_pixels
from clipvdb import STAGES, SearchSettings, Store, embedded
from clipvdb.sources import open_source


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an image-folder CIFAR-10 copy (train/ and test/)")
    ap.add_argument("--train", type=int, help="only the first N training images (default: all)")
    ap.add_argument("--test", type=int, help="only the first N test images (default: all)")
    ap.add_argument("--project", type=int, default=64)
    ap.add_argument("--lists", type=int, help="ivfflat lists (default: rows/100)")
    ap.add_argument("settings", nargs="*", default=["probes=25"], help="name=value[,name=value] per run")
    args = ap.parse_args(argv)
    source = open_source(args.data)
    n_train = args.train or len(source.items("train"))
    n_test = args.test or len(source.items("test"))
    X, _, keys = load_pixels(source, "train", n_train)
    Q, y, _ = load_pixels(source, "test", n_test)
    nearest, _ = exact_baseline(X, Q)
    truth = [keys[i] for i in nearest]
    del X
    home = Path(tempfile.mkdtemp(prefix="clipvdb-recall-"))
    out = []
    try:
        with Store(home=home) as store:
            store.ingest(args.data, stages="first", split="train", limit=n_train, build_index=False)
            store.index("first", kind="ivfflat", project=args.project, lists=args.lists)
            dataset = store.dataset(None)
            for spec in args.settings:
                kw = {k: int(v) for k, v in (kv.split("=") for kv in spec.split(","))}
                searcher = store.searcher(STAGES["first"], SearchSettings(**kw), dataset=dataset.name)
                with store.connection() as conn:
                    searcher.search(conn, Q[:100])  # warm: the index pages in shared buffers
                    start = time.perf_counter()
                    correct = hits = 0
                    for b in range(0, len(Q), 100):
                        answers, _ = searcher.search(conn, Q[b : b + 100])
                        correct += sum(int(a[0].label == y[b + i]) for i, a in enumerate(answers))
                        hits += sum(int(a[0].source == truth[b + i]) for i, a in enumerate(answers))
                    seconds = time.perf_counter() - start
                row = {
                    "settings": spec,
                    "seconds": round(seconds, 2),
                    "accuracy_pct": round(100 * correct / len(Q), 2),
                    "recall_at_1": round(hits / len(Q), 4),
                }
                print(row, flush=True)
                out.append(row)
    finally:
        embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
