"""Two commits, the headline's commands: did a change move what a user waits for?

    python -m bench.ab --data .cache/data/cifar10 --before 4c2c7d2 [--after HEAD] [--rounds 3]

Each commit is checked out in a temporary git worktree. Each round runs both commits, in the order
A B, then B A in the next round (so a drift of the machine's speed falls on both alike), each in a
fresh CLIPVDB_HOME: `clipvdb ingest --stage first --data D`, `clipvdb evaluate --stage first --data
D` and `clipvdb classify IMG --stage first`, each a subprocess running that commit's code, timed from
outside (the embedded server's start and the schema's creation fall in the ingest). Prints each
command's median seconds per commit and the median of the per-round ratios after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench import markdown
from bench.common import CLI, timed
from clipvdb.sources import open_source

COMMANDS = ("ingest", "evaluate", "classify")


def worktree(rev: str, where: Path) -> Path:
    """The commit checked out at `where`, importable as it stands there with PYTHONPATH: the
    packages that pyproject maps from other folders (the migrations, the view SQL) get a link in the
    tree's package, so that they are the commit's own and not the installed checkout's."""
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], check=True, capture_output=True)
    for package, folder in (("migrations", "migrations"), ("sql", "sql")):
        link = where / "clipvdb" / package
        if (where / folder).is_dir() and not link.exists():
            link.symlink_to(Path("..") / folder)
    return where


def one_run(code: Path, data: str, image: str) -> dict[str, float]:
    """The three commands of one commit in a fresh home: seconds each."""
    home = Path(tempfile.mkdtemp(prefix="clipvdb-ab-"))
    env = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"}
    env.update(CLIPVDB_HOME=str(home), PYTHONPATH=str(code))
    try:
        out = {
            "ingest": timed(["ingest", "--stage", "first", "--data", data, "--json"], env, code)[0],
            "evaluate": timed(["evaluate", "--stage", "first", "--data", data, "--json"], env, code)[0],
            "classify": timed(["classify", image, "--stage", "first"], env, code)[0],
        }
    finally:
        subprocess.run(CLI + ["db", "stop"], env=env, cwd=code, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an image-folder CIFAR-10 copy (train/ and test/)")
    ap.add_argument("--before", required=True, help="the commit measured against")
    ap.add_argument("--after", default="HEAD", help="the commit measured (default: HEAD)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench-out/ab.json"))
    args = ap.parse_args(argv)
    # the commands run in each commit's worktree: a data folder given relative to here is resolved
    data = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
    image = str(Path(open_source(data).items("test")[0].path).resolve())
    work = Path(tempfile.mkdtemp(prefix="clipvdb-ab-trees-"))
    revs = {"before": args.before, "after": args.after}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    try:
        trees = {name: worktree(rev, work / name) for name, rev in revs.items()}
        for r in range(args.rounds):
            for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
                runs[name].append(one_run(trees[name], data, image))
                print(name, json.dumps(runs[name][-1]), flush=True)
    finally:
        for name in revs:
            subprocess.run(["git", "worktree", "remove", "--force", str(work / name)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "revisions": {
            name: subprocess.run(["git", "rev-parse", "--short", rev], capture_output=True, text=True).stdout.strip()
            for name, rev in revs.items()
        },
        "runs": runs,
        "machine": markdown.machine(),
    }
    rows = []
    for c in COMMANDS:
        before = [x[c] for x in runs["before"]]
        after = [x[c] for x in runs["after"]]
        ratios = [a / b for a, b in zip(after, before, strict=True)]
        result[c] = {"before_s": statistics.median(before), "after_s": statistics.median(after)}
        result[c]["ratio"] = statistics.median(ratios)
        rows.append(
            [
                f"`clipvdb {c}`",
                f"{result[c]['before_s']:.2f}",
                f"{result[c]['after_s']:.2f}",
                f"{result[c]['ratio']:.3f} ({min(ratios):.3f}-{max(ratios):.3f})",
            ]
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    revisions = result["revisions"]
    print(f"Measured {result['machine']}; {args.rounds} rounds, the order alternating.\n")
    print(
        markdown.table(
            ["command", f"{revisions['before']} s (median)", f"{revisions['after']} s (median)", "after / before"],
            rows,
        )
    )
    return result


if __name__ == "__main__":
    main()
