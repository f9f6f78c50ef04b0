"""Models side by side in one database: per model x stage, accuracy, encoder and query ms, bytes per row.

    python -m bench.models --data .cache/data/cifar10 [--train 50000] [--test 10000] --write

One fresh CLIPVDB_HOME holds every model. For each, `clipvdb ingest --stage S --model M --limit N`,
then `clipvdb evaluate --stage S --model M --limit T --k 1,5,10,20`, each a subprocess timed from
outside. Per model x stage: accuracy at k 1 and the best (k, vote) of report_accuracy_by_k (one
search scores every k and vote), the encoder's and the query's mean ms per image (report_timing),
the stored vector's bytes (pg_column_size) and its index's bytes per row (`clipvdb models`). Models:
pixels (stage first, no network), the CNN that ships with clipvdb, ImageNet EfficientNet-Lite0 at
its own 224 px and at 128 px; RN50 and ViT-B-32 with random weights show cost only, on
`--cost-train` / `--cost-test` images, labelled so. For the ImageNet models, two more rows: stage
origin through each learned metric fitted on the stored training vectors (`clipvdb learn --stage
origin --method nca --dims 128`, then `--method mlp`, each with its default 120 s budget), each
followed by `clipvdb evaluate --learned`. The fine-tuned row's model is first trained in the same
home: `clipvdb train --base efficientnet-lite0@160 --epochs 1` on the stored training images
(nothing of the test split), its checkpoint then the model's `--model`. Then each model of
`--alone` again in a fresh home of its own, same commands: its accuracy there beside the shared
database's; then its evaluate again in both homes, shared and alone taking turns (`--turns` each,
each turn on a freshly started server), so that both query times are measured in the same minutes
over several server instances: the median of each is compared;
and its `evaluate --exact` in both homes over the first `--exact-test` test images, whose accuracy
no index build's sampling moves.
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

from bench import markdown, statements
from bench.common import CLI
from bench.scale import run
from clipvdb import STAGES, Store, db
from clipvdb.demo import SHIPPED_MODEL

KS = "1,5,10,20"
# name shown, --model, --pretrained, stages, cost only (random weights: accuracy means nothing)
MODELS = [
    ("pixels", None, None, "first", False),
    ("cnn (shipped)", str(SHIPPED_MODEL), None, "second,third,origin", False),
    ("efficientnet-lite0", "efficientnet-lite0", None, "second,third,origin", False),
    ("efficientnet-lite0@128", "efficientnet-lite0@128", None, "second,third,origin", False),
    ("efficientnet-lite0@160 fine-tuned", "tuned.pt", None, "second,third,origin", False),
    ("RN50 (random weights)", "RN50", "random", "second,third,origin", True),
    ("ViT-B-32 (random weights)", "ViT-B-32", "random", "second,third,origin", True),
]
GOALS = {"accuracy_points": 0.1, "query_ms_of_alone": 1.1}
# models the bench trains first (`clipvdb train --base BASE --epochs E` on the stored training images,
# the checkpoint written to the home as the model's --model)
TUNED = {"efficientnet-lite0@160 fine-tuned": ("efficientnet-lite0@160", 1)}
NO_SEARCH_MS = 0.01  # a stage the model classifies itself searches nothing: its query ms is not compared
# models whose origin is also measured through learned metrics, each a (method, dims) fitted in turn
LEARNED = {
    "efficientnet-lite0": (("nca", 128), ("mlp", 128)),
    "efficientnet-lite0@128": (("nca", 128), ("mlp", 128)),
}


def _model_args(model: tuple, data: str) -> list[str]:
    """The arguments that name a model's stages, data and weights to ingest and evaluate."""
    _, flag, pretrained, stages, _ = model
    args = ["--stage", stages, "--data", data, "--json"]
    if flag:
        args += ["--model", flag] + (["--pretrained", pretrained] if pretrained else [])
    return args


def measure(
    home: Path, env: dict, data: str, model: tuple, train: int, test: int, learn_seconds: float = 120.0
) -> list[dict]:
    """One model's ingest and evaluate in `home`: a row per stage (and one per learned metric, where
    LEARNED names the model, each trained for `learn_seconds`)."""
    name, flag, _, stages, cost_only = model
    args = _model_args(model, data)
    ing = run(["ingest", *args, "--limit", str(train)], env, home)
    ev = run(["evaluate", *args, "--limit", str(test), "--k", KS], env, home)
    rows = _rows(home, name, stages, cost_only, ing, ev)
    for method, dims in LEARNED.get(name, ()) if "origin" in stages.split(",") else ():
        on_origin = ["--stage", "origin", "--model", str(flag), "--json"]
        learn = ["learn", *on_origin, "--method", method, "--dims", str(dims), "--seconds", str(learn_seconds)]
        fit = run(learn, env, home)
        data_args = ["--data", data, "--limit", str(test), "--k", KS]
        ev_learned = run(["evaluate", *on_origin, *data_args, "--learned"], env, home)
        (row,) = _rows(home, name, "origin", cost_only, ing, ev_learned)
        with Store(home=home) as store, store.connection() as conn:
            row["vector_bytes"] = db.scalar(conn, statements.learned_vector_bytes(STAGES["origin"]), (row["space"],))
            index = f"{STAGES['origin'].learned_table}_ann_{row['space']}"
            row["index_bytes_per_row"] = db.scalar(conn, statements.INDEX_BYTES, (index,)) / max(row["stored"], 1)
        row.update(learned=f"{method} {dims}-d", learn_s=fit["seconds"], dim=dims, index="ivfflat (learned space)")
        rows.append(row)
    return rows


def tune(home: Path, env: dict, data: str, name: str, base: str, epochs: int, train: int) -> dict:
    """`clipvdb train --base BASE --epochs E` on the first `train` training images, its checkpoint
    written to the home (the name's file): the command's JSON, with its seconds and the file."""
    checkpoint = home / f"{name.replace(' ', '-').replace('@', '-')}.pt"
    train_args = ["--data", data, "--base", base, "--epochs", str(epochs), "--limit", str(train)]
    trained = run(["train", *train_args, "--out", str(checkpoint), "--json"], env, home)
    return {**json.loads(trained["stdout"]), "command_s": trained["seconds"], "checkpoint": str(checkpoint)}


def exact(home: Path, env: dict, data: str, model: tuple, test: int) -> dict[str, float]:
    """The model's 1-NN accuracy per stage by exact search (`evaluate --exact`, no index) over the
    first `test` test images: what the stored vectors answer, whatever an index build sampled."""
    out = run(["evaluate", *_model_args(model, data), "--limit", str(test), "--exact"], env, home)
    return {stage: s["accuracy_pct"] for stage, s in json.loads(out["stdout"])["stages"].items()}


def turns(shared: tuple[Path, dict], alone: tuple[Path, dict], data: str, model: tuple, test: int, n: int) -> dict:
    """The model's evaluate in the shared home and in its own, taking turns `n` times each: per
    stage, each home's query ms per image (report_timing) of every turn. Each turn starts its home's
    server afresh: one server instance's query ms can sit several percent above or below another's
    on the same data, so turns on one instance per home would compare two instances, not layouts."""
    name, _, _, stages, _ = model
    args = ["evaluate", *_model_args(model, data), "--limit", str(test), "--k", KS]
    out: dict = {stage: {"shared": [], "alone": []} for stage in stages.split(",")}
    for _ in range(n):
        for where, (home, env) in (("shared", shared), ("alone", alone)):
            subprocess.run(CLI + ["db", "stop"], env=env, capture_output=True, check=True)
            run_id = json.loads(run(args, env, home)["stdout"])["run_id"]
            with Store(home=home) as store:
                for t in store.report("report_timing", run_id):
                    out[t["stage"]][where].append(float(t["query_ms_mean"] or 0))
    return {"model": name, "stages": out}


def _rows(home: Path, name: str, stages: str, cost_only: bool, ing: dict, ev: dict) -> list[dict]:
    """A row per stage of one evaluate run (`ev`) after its ingest (`ing`)."""
    evaluated = json.loads(ev["stdout"])
    run_id = evaluated["run_id"]
    with Store(home=home) as store:
        report = store.reports(run_id, ["report_accuracy", "report_accuracy_by_k", "report_timing"])
        spaces = {(s.stage, s.model): s for s in store.status().spaces}
        rows = []
        for stage in stages.split(","):
            # a stage its model classifies itself (the shipped CNN's origin) has no neighbours to vote
            by_k = [r for r in report["report_accuracy_by_k"] if r["stage"] == stage] or [
                {**r, "k": 0, "vote": "own classifier"} for r in report["report_accuracy"] if r["stage"] == stage
            ]
            best = max(by_k, key=lambda r: (r["accuracy_pct"], -r["k"]))
            at_1 = next((r for r in by_k if r["k"] == 1 and r["vote"] == "majority"), by_k[0])
            timing = next(r for r in report["report_timing"] if r["stage"] == stage)
            space = spaces[(stage, timing["model"])]
            with store.connection() as conn:
                vector_bytes = db.scalar(conn, statements.space_vector_bytes(STAGES[stage]), (space.space,))
            rows.append(
                {
                    "model": name,
                    "stage": stage,
                    "cost_only": cost_only,
                    "dim": space.dim,
                    "stored": space.rows,
                    "queries": evaluated["stages"][stage]["n"],
                    "accuracy_1nn": at_1["accuracy_pct"],
                    "best": {"k": best["k"], "vote": best["vote"], "accuracy": best["accuracy_pct"]},
                    "encode_ms": float(timing["encode_ms_mean"] or 0),
                    "query_ms": float(timing["query_ms_mean"] or 0),
                    "vector_bytes": vector_bytes,
                    "index_bytes_per_row": space.size_bytes / max(space.rows, 1),
                    "index": f"{space.kind} "
                    + ", ".join(f"{k}={v}" for k, v in space.params.items() if k in ("lists", "project", "m")),
                    "ingest_s": ing["seconds"],
                    "evaluate_s": ev["seconds"],
                    "run_id": run_id,
                    "space": space.space,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an image-folder CIFAR-10 copy (train/ and test/)")
    ap.add_argument("--train", type=int, default=50_000, help="training images stored per model")
    ap.add_argument("--test", type=int, default=10_000, help="test images queried per model")
    ap.add_argument("--cost-train", type=int, default=2_000, help="training images for the random-weight models")
    ap.add_argument("--cost-test", type=int, default=200, help="test images for the random-weight models")
    ap.add_argument("--models", help="names of MODELS to run, comma-separated (default: all)")
    ap.add_argument("--alone", default="pixels,cnn (shipped)", help="models measured again alone in a fresh home")
    ap.add_argument("--turns", type=int, default=7, help="evaluates per home of an --alone model, taking turns")
    ap.add_argument("--exact-test", type=int, default=1_000, help="test images searched exactly per --alone model")
    ap.add_argument("--learn-seconds", type=float, default=120.0, help="training budget of each learned row")
    ap.add_argument("--out", type=Path, default=Path("bench-out/models.json"))
    ap.add_argument("--write", action="store_true", help="rewrite the models block of BENCHMARKS.md")
    args = ap.parse_args(argv)
    chosen = [m for m in MODELS if not args.models or m[0] in args.models.split(",")]
    env_base = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"}
    env_base["PYTHONUNBUFFERED"] = "1"
    result: dict = {"train": args.train, "test": args.test, "cost_train": args.cost_train, "cost_test": args.cost_test}
    result.update(turns=args.turns, exact_test=args.exact_test, training=[])
    homes: list[Path] = []

    def home() -> tuple[Path, dict]:
        homes.append(Path(tempfile.mkdtemp(prefix="clipvdb-models-")))
        return homes[-1], dict(env_base, CLIPVDB_HOME=str(homes[-1]))

    try:
        shared, env = home()
        result["shared"] = []
        for model in chosen:
            n, t = (args.cost_train, args.cost_test) if model[4] else (args.train, args.test)
            if model[0] in TUNED:
                base, epochs = TUNED[model[0]]
                trained = tune(shared, env, args.data, model[0], base, epochs, n)
                result["training"].append({**trained, "model": model[0], "base": base, "epochs": epochs})
                model = (model[0], trained["checkpoint"], *model[2:])
            result["shared"].extend(measure(shared, env, args.data, model, n, t, args.learn_seconds))
            print(json.dumps(result["shared"][-1]), flush=True)
        result["alone"], result["alone_turns"], result["exact"] = [], [], []
        for model in chosen:
            if model[0] in args.alone.split(","):
                own, own_env = home()
                n, t = (args.cost_train, args.cost_test) if model[4] else (args.train, args.test)
                result["alone"].extend(measure(own, own_env, args.data, model, n, t))
                pair = ((shared, env), (own, own_env))
                result["alone_turns"].append(turns(*pair, args.data, model, t, args.turns))
                t_exact = min(t, args.exact_test)
                both = {
                    w: exact(h, e, args.data, model, t_exact)
                    for w, (h, e) in zip(("shared", "alone"), pair, strict=True)
                }
                result["exact"].append({"model": model[0], **both})
    finally:
        for h in homes:
            subprocess.run(CLI + ["db", "stop"], env=dict(env_base, CLIPVDB_HOME=str(h)), capture_output=True)
            shutil.rmtree(h, ignore_errors=True)
    result["machine"] = markdown.machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(render(result))
    if args.write:
        markdown.write("models", render(result), ["BENCHMARKS.md"])
    return result


HEADER = [
    "model",
    "stage",
    "dim",
    "accuracy (1-NN)",
    "best (k, vote)",
    "encoder ms / image",
    "query ms / image",
    "bytes per row: vector / index",
    "stored (ingest s)",
]


def table_row(x: dict) -> list[str]:
    """One model x stage row (measure's) under HEADER."""
    acc = "(random weights)" if x["cost_only"] else f"{x['accuracy_1nn']:.2f} %"
    best = "" if x["cost_only"] else f"{x['best']['accuracy']:.2f} % (k {x['best']['k']}, {x['best']['vote']})"
    return [
        x["model"],
        x["stage"] + (f", learned metric ({x['learned']}, fitted in {x['learn_s']:.0f} s)" if "learned" in x else ""),
        f"{x['dim']:,}",
        acc,
        best,
        f"{x['encode_ms']:.2f}",
        f"{x['query_ms']:.3f}",
        f"{x['vector_bytes']:,.0f} / "
        + ("(not measured)" if x["index_bytes_per_row"] is None else f"{x['index_bytes_per_row']:,.0f}"),
        f"{x['stored']:,} in {x['ingest_s']:.0f} s",
    ]


def render(r: dict) -> str:
    lines = [
        f"Measured {r['machine']}, one run of `python -m bench.models --train {r['train']} --test {r['test']}`: "
        f"every model in ONE fresh database, CIFAR-10's first {r['train']:,} training images stored and its first "
        f"{r['test']:,} test images queried per model (random-weight models: {r['cost_train']:,} and "
        f"{r['cost_test']:,}, for their cost); each command a subprocess. Ms per image are means over the "
        "evaluate's images (report_timing); the stage's row of an ingest shares its command's seconds.",
        "",
        markdown.table(HEADER, [table_row(x) for x in r["shared"]]),
        "",
    ]
    for t in r.get("training", []):
        lines.append(
            f"{t['model']}: `clipvdb train --base {t['base']} --epochs {t['epochs']}` on the same {t['images']:,} "
            f"stored training images (nothing of the test split), {t['steps']:,} steps in {t['train_seconds']:.0f} s "
            f"({t['images_per_s']:.0f} images/s; the command {t['command_s']:.0f} s); its checkpoint is the "
            "model's `--model`.\n"
        )
    shared = {(x["model"], x["stage"]): x for x in r["shared"] if "learned" not in x}
    timed = {(t["model"], stage): ms for t in r.get("alone_turns", []) for stage, ms in t["stages"].items()}
    exact = {
        (e["model"], stage): (e["shared"][stage], e["alone"][stage])
        for e in r.get("exact", [])
        for stage in e["shared"]
    }
    if timed:
        lines.append(
            f"Shared database against each model alone in a fresh one: accuracy from each home's first evaluate; "
            f"query ms the median of {r['turns']} more evaluates per home, the two homes taking turns in the same "
            "minutes, each turn on a freshly started server; exact search's accuracy (`--exact`, no index) over the first "
            f"{r.get('exact_test', 0):,} test images in each home. Goal: within "
            f"{GOALS['accuracy_points']} point and <= {GOALS['query_ms_of_alone']}x the query ms.\n"
        )
    for x in r.get("alone", []):
        s = shared[(x["model"], x["stage"])]
        ms = timed[(x["model"], x["stage"])]
        here, there = statistics.median(ms["shared"]), statistics.median(ms["alone"])
        gap = round(abs(s["accuracy_1nn"] - x["accuracy_1nn"]), 2)  # accuracies are given to 2 places
        if max(here, there) < NO_SEARCH_MS:
            timing, fast = f"query ms {here:.4f} / {there:.4f} (its own classifier: no search to compare)", True
        else:
            ratio = here / there
            timing, fast = f"query ms {here:.3f} / {there:.3f} ({ratio:.2f}x)", ratio <= GOALS["query_ms_of_alone"]
        met = gap <= GOALS["accuracy_points"] and fast
        spread = "" if max(here, there) < NO_SEARCH_MS else f" (turns {_span(ms['shared'])} / {_span(ms['alone'])})"
        by_exact = exact.get((x["model"], x["stage"]))
        exact_text = f", exact search {by_exact[0]:.2f} / {by_exact[1]:.2f} %" if by_exact else ""
        lines.append(
            f"- {x['model']} {x['stage']}, shared / alone: accuracy {s['accuracy_1nn']:.2f} / "
            f"{x['accuracy_1nn']:.2f} %{exact_text}, {timing}{spread}: **{'met' if met else 'not met'}**."
        )
    return "\n".join(lines) + "\n"


def _span(values: list[float]) -> str:
    return f"{min(values):.3f} to {max(values):.3f}"


if __name__ == "__main__":
    main()
