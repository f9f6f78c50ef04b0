"""The study's figures as PNG files, drawn from the report views."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .errors import UsageError
from .reports import row_label, several_models

if TYPE_CHECKING:
    from .experiment import ExperimentResult
    from .reports import Report

CORRECT, WRONG = "#2a9d8f", "#e76f51"


def _key(row: dict) -> tuple:
    """A report row's model and stage: a run of several models has a row per model and stage."""
    return row.get("model"), row["stage"]


def histogram(
    rows: list[dict], key: tuple, run: int, out: Path, *, squared: bool = False, metric: str = "l2", several=False
) -> Path:
    """One run's distances to the nearest neighbour at one (model, stage), correct and wrong."""
    stage = key[1]
    label = row_label({"model": key[0], "stage": stage}, several)
    rows = [r for r in rows if _key(r) == key]
    power = 2 if squared else 1
    lo = [r["bin_lo"] ** power for r in rows]
    width = [r["bin_hi"] ** power - r["bin_lo"] ** power for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    w = [x if x > 0 else 1e-6 for x in width]
    ax.bar(lo, [r["n_correct"] for r in rows], width=w, align="edge", color=CORRECT, alpha=0.8, label="correct")
    ax.bar(lo, [r["n_wrong"] for r in rows], width=w, align="edge", color=WRONG, alpha=0.6, label="wrong")
    what = axis_label(stage, metric, squared)
    ax.set_xlabel(what)
    ax.set_ylabel("images")
    ax.set_title(f"run {run}, {'' if several else 'stage '}{label}: {what}")
    ax.legend()
    fig.tight_layout()
    name = "".join(c if c.isalnum() or c in "-._" else "-" for c in label.replace(" ", "_"))
    path = out / f"run{run}_{name}_distance{'_squared' if squared else ''}_hist.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def axis_label(stage: str, metric: str, squared: bool) -> str:
    """What a histogram's x axis shows, named exactly (the study's axis is squared L2)."""
    if stage == "origin":
        base = "cosine distance to the best class prompt"
    else:
        base = {"l2": "L2 (Euclidean) distance", "cosine": "cosine distance", "ip": "negative inner product"}.get(
            metric, metric
        ) + " to the nearest neighbor"
    return f"squared {base} (the study's axis)" if squared and stage != "origin" else base


def summary(acc: list[dict], timing: list[dict], run: int, out: Path) -> Path:
    """A run's accuracy and ms per image (encoder and query) per stage, or per model and stage."""
    several = several_models(acc)
    stages = [row_label(r, several) for r in acc]
    t = {row_label(r, several): r for r in timing}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    bars = a1.bar(stages, [r["accuracy_pct"] for r in acc], color="#457b9d")
    a1.bar_label(bars, fmt="%.1f%%")
    a1.set_ylabel("accuracy (%)")
    a1.set_ylim(0, 100)
    a1.set_title("accuracy per stage")
    enc = [t[s]["encode_ms_mean"] for s in stages]
    qry = [t[s]["query_ms_mean"] for s in stages]
    a2.bar(stages, enc, label="encoder", color="#1d3557")
    a2.bar(stages, qry, bottom=enc, label="query", color="#a8dadc")
    a2.set_ylabel("ms per image (mean)")
    a2.set_title("time per stage")
    a2.legend()
    fig.suptitle(f"run {run}")
    fig.tight_layout()
    path = out / f"run{run}_accuracy_time.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot(data: Report, out: Path, *, squared: bool = False) -> list[Path]:
    """Write one histogram per stage and the accuracy/time bar chart from a run's reports (the
    Store's `reports`); return the paths. `squared` draws the study's axis (squared L2)."""
    run = data["run_id"]
    if run is None:
        raise UsageError("no complete evaluation run to plot; run 'clipvdb evaluate' first")
    out.mkdir(parents=True, exist_ok=True)
    metric = (data["report_runs"][0]["metric"] if data.get("report_runs") else None) or "l2"
    several = several_models(data["report_accuracy"])
    paths = [
        histogram(data["report_distance_histogram"], _key(r), run, out, squared=squared, metric=metric, several=several)
        for r in data["report_accuracy"]
    ]
    paths.append(summary(data["report_accuracy"], data["report_timing"], run, out))
    return paths


def tradeoff_points(reports: list[Report]) -> list[dict]:
    """Every run's model x stage as a point of the study's trade-off: accuracy against the encoder's
    and the query's mean ms per image (report_accuracy beside report_timing)."""
    points = []
    for data in reports:
        timing = {_key(r): r for r in data["report_timing"]}
        for r in data["report_accuracy"]:
            t = timing.get(_key(r))
            if t is None:
                continue
            ms = float(t["encode_ms_mean"] or 0) + float(t["query_ms_mean"] or 0)
            point = {"run": data["run_id"], "model": r["model"], "stage": r["stage"]}
            points.append(point | {"ms": ms, "accuracy": r["accuracy_pct"]})
    return points


def tradeoff(reports: list[Report], out: Path) -> Path:
    """One chart of every run's model x stage: accuracy against ms per image (log scale), a colour
    per model: which depth of which encoder buys what accuracy for what time."""
    runs = [data["run_id"] for data in reports]
    points = tradeoff_points(reports)
    models = list(dict.fromkeys(p["model"] for p in points))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for i, model in enumerate(models):
        mine = [p for p in points if p["model"] == model]
        ax.scatter([max(p["ms"], 1e-3) for p in mine], [p["accuracy"] for p in mine], label=model, color=f"C{i}")
        for p in mine:
            ax.annotate(p["stage"], (max(p["ms"], 1e-3), p["accuracy"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.set_xlabel("ms per image (encoder + query, mean)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy against time: runs {', '.join(str(r) for r in runs)}")
    ax.legend(title="model")
    fig.tight_layout()
    path = out / f"runs{'-'.join(str(r) for r in runs)}_tradeoff.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_experiment(result: ExperimentResult, out: Path) -> Path:
    """Recall@1 against queries per second, one line per (size, index kind)."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    groups: dict[tuple, list[dict]] = {}
    for r in result.rows:
        groups.setdefault((r["size"], r["method"]), []).append(r)
    for (size, method), rows in sorted(groups.items()):
        qps = [1000 / r["mean_ms"] for r in rows]
        rec = [r["recall_at_1"] for r in rows]
        ax.plot(qps, rec, marker="o" if method != "exact" else "s", label=f"{method}, {size:,} rows")
    ax.set_xscale("log")
    ax.set_xlabel("queries per second (one client)")
    ax.set_ylabel("recall@1 against exact search")
    ax.set_title(f"experiment {result.experiment_id}: recall versus speed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
