"""`clipvdb serve`: small server-rendered pages. Classify an image, browse its neighbors and search
stored images by text; and look at what is stored: every evaluation run, one run's accuracy, time,
distances and errors, runs side by side, clusterings, search experiments, the data and the
database's health. Every figure comes from the report views through the Store; charts are inline
SVG drawn here (charts.py), each followed by a table of its numbers; nothing needs JavaScript or
the network. Bound to 127.0.0.1 by default; uploads are size-capped and decoded with the same
checks as ingest input. Every request goes through one Store (one connection pool); an upload is
decoded once, in memory."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import psycopg
from flask import Flask, Response, abort, render_template, request

from . import charts
from .errors import ClipvdbError, ImageError
from .images import load_image
from .knn import SearchSettings
from .reports import ExperimentRow, RunSummary, row_label, several_models
from .stages import parse_stages
from .store import Store

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
STAGE_ORDER = ("first", "second", "third", "origin")
NAV = (
    ("index", "Classify"),
    ("runs", "Runs"),
    ("clusters", "Clusters"),
    ("experiments", "Experiments"),
    ("duplicates", "Duplicates"),
    ("data", "Data"),
)
# /runs: the columns a visitor can sort by (besides accuracy_<stage>)
RUN_SORTS = ("run_id", "dataset", "stages", "model", "k", "status", "images", "seconds")
MAX_COMPARE = 8
MAX_DUPLICATES_SHOWN = 200


def _sort_key(value: Any) -> tuple:
    """Sort None last, numbers as numbers, everything else as text."""
    if value is None:
        return (1, 0, "")
    if isinstance(value, int | float):
        return (0, value, "")
    return (0, 0, str(value))


def sorted_runs(runs: list[RunSummary], column: str, desc: bool) -> list[RunSummary]:
    """Runs sorted by a column of /runs (accuracy_<stage>: that stage's accuracy); None stays last."""

    def value(r: RunSummary) -> Any:
        if column.startswith("accuracy_"):
            return r.accuracy.get(column.removeprefix("accuracy_"))
        v = r.get(column)
        return ",".join(v) if isinstance(v, list) else v

    present = [r for r in runs if value(r) is not None]
    missing = [r for r in runs if value(r) is None]
    return sorted(present, key=lambda r: _sort_key(value(r)), reverse=desc) + missing


def index_settings(index: dict | None) -> str:
    """report_runs.index as one line: per stage its kind and parameters, or 'exact' (a run of several
    models: per model)."""
    if not index:
        return ""
    if all(isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()) for v in index.values()):
        return "; ".join(f"{model}: {index_settings(per_stage)}" for model, per_stage in index.items())
    out = []
    for stage in sorted(index, key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else 9):
        i = index[stage] or {}
        if not i.get("used", True):
            out.append(f"{stage}: exact")
            continue
        params = ", ".join(f"{k}={v}" for k, v in i.items() if k not in ("kind", "used", "exists", "projected"))
        out.append(f"{stage}: {i.get('kind', '?')}" + (f" ({params})" if params else ""))
    return "; ".join(out)


def ms_per_image(t: dict) -> float:
    """The study's cost of a prediction: the encoder pass to the stage plus the query, per image
    (shares of the run's wall time, report_timing)."""
    return (t.get("encode_ms_mean") or 0.0) + (t.get("query_ms_mean") or 0.0)


def ran_at_once(timing: list[dict]) -> str:
    """What ran at once in a run, from its report_timing rows: connections, decoding workers,
    encoder threads, cores ('' for a run that did not record them; a run of several models: per model)."""
    if several_models(timing):
        return "; ".join(f"{model}: {ran_at_once(rows)}" for model, rows in _turns(timing))
    t = timing[0] if timing else {}
    if t.get("connections") is None:
        return ""
    parts = [f"{t['connections']} connections", f"{t['workers']} decoding workers"]
    if t.get("encoder_threads"):
        parts.append(f"{t['encoder_threads']} encoder threads")
    return ", ".join(parts) + f" on {t['cores']} cores"


def _turns(timing: list[dict]) -> list[tuple[str, list[dict]]]:
    """A run of several models' report_timing rows per model's turn (model_no), each named by its
    model (stage first, pixels, is answered in the first model's turn)."""
    by: dict[int, list[dict]] = {}
    for r in timing:
        by.setdefault(r["model_no"], []).append(r)
    return [
        (next((r["model"] for r in rows if r["stage"] != "first"), rows[0]["model"]), rows)
        for _, rows in sorted(by.items())
    ]


def timing_note(timing: list[dict]) -> str:
    """How a run's times per image were measured, and (wall shares) how they add up to its wall time;
    a run of several models, each model's turn on its own."""
    if not timing:
        return ""
    if several_models(timing):
        return "Each model took its turn over the images, timed on a clock of its own. " + " ".join(
            f"{model}: {timing_note(rows)}" for model, rows in _turns(timing)
        )
    t = timing[0]
    if t.get("timing") != "wall share":
        return (
            "Times per image are each batch's own time over its images: work that overlapped is counted in "
            "each, so they can add up to more than the run's wall time."
        )
    deepest = max(timing, key=lambda r: r.get("encode_ms_mean") or 0.0)
    parts = [
        ("decode", t.get("decode_ms_mean")),
        (f"encode (the pass to {deepest['stage']})", deepest.get("encode_ms_mean")),
        ("query (every stage)", sum(r.get("query_ms_mean") or 0.0 for r in timing)),
        ("store", t.get("store_ms_mean")),
        ("other", t.get("other_ms_mean")),
    ]
    terms = " + ".join(f"{name} {v or 0.0:.2f}" for name, v in parts)
    return (
        f"Times per image are the run's wall time shared among the work in progress ({ran_at_once(timing)}): "
        "at every moment the time is split among the batches decoding, encoding, searched and stored then, "
        f"in proportion to their threads, so overlapping work is counted once and the parts add up: {terms} = "
        f"{t.get('wall_ms_per_image') or 0.0:.2f} ms per image. A stage's encode ms is the cumulative cost of the "
        "encoder pass up to its depth (stages asked together share one pass)."
    )


def label_rows(views: list[list[dict]], several: bool) -> None:
    """Name every report row by what it answers: its stage, or (runs of several models) its model and
    stage (`shown_as`), the key the pages group and match rows by."""
    for rows in views:
        for row in (r for r in rows if "stage" in r):
            row["shown_as"] = row_label(row, several)


def _label(row: dict) -> str:
    return row.get("shown_as") or row["stage"]


def trade_off(per_run: dict[str, tuple[list[dict], list[dict]]]) -> tuple[str, list[dict]]:
    """The trade-off chart (accuracy against encoder + query ms per image) with one series per run
    (a run of several models: per model of the run), and its points as table rows. `per_run`: name ->
    (report_accuracy rows, report_timing rows). Its note says what ran at once (one run of one
    model) or how each series was timed (several)."""
    series: dict[str, list[tuple[float, float, str]]] = {}
    rows = []
    for name, (accuracy, timing) in per_run.items():
        ms = {_label(t): ms_per_image(t) for t in timing}
        several = several_models(accuracy)
        for a in accuracy:
            if _label(a) in ms:
                mine = f"{name} {a['model']}" if several and a["stage"] != "first" else name
                at = ms[_label(a)]
                series.setdefault(mine, []).append((at, float(a["accuracy_pct"]), a["stage"]))
                rows.append({"series": mine, "stage": a["stage"], "ms": at, "accuracy_pct": a["accuracy_pct"]})
    timings = [timing for _, timing in per_run.values() if timing]
    shared = all(t[0].get("timing") == "wall share" for t in timings)
    if len(timings) == 1 and shared and not several_models(timings[0]):
        note = "wall time shared among the work in progress: " + ran_at_once(timings[0])
    elif shared:
        note = "wall time shared among the work in progress (each run's concurrency in the table above)"
    else:
        note = "a run timed as summed batches counts overlapping work in each"
    svg = charts.line_chart(
        series,
        charts.Axes(
            "Accuracy against time per image",
            "encoder + query ms per image (share of the wall time)",
            "accuracy %",
            note=note if timings else "",
        ),
    )
    return svg, rows


def histograms(rows: list[dict]) -> list[dict]:
    """report_distance_histogram per stage (or model and stage) with every one of its 20 bins (the
    view leaves out empty ones): {"stage" (its label), "id", "bins": [{bin, bin_lo, bin_hi,
    n_correct, n_wrong}], "svg"}."""
    out = []
    for stage in _stages_of(rows):
        have = {r["bin"]: r for r in rows if _label(r) == stage}
        any_row = next(iter(have.values()))
        width = float(any_row["bin_hi"]) - float(any_row["bin_lo"])
        lo = float(any_row["bin_lo"]) - (any_row["bin"] - 1) * width
        n = 20 if width > 0 else 1
        bins = [
            have.get(b)
            or {"bin": b, "bin_lo": lo + (b - 1) * width, "bin_hi": lo + b * width, "n_correct": 0, "n_wrong": 0}
            for b in range(1, n + 1)
        ]
        edges = [float(b["bin_lo"]) for b in bins] + [float(bins[-1]["bin_hi"])]
        if width == 0:
            edges[-1] = edges[0] + 1e-9
        svg = charts.histogram(
            edges,
            {"correct": [int(b["n_correct"]) for b in bins], "wrong": [int(b["n_wrong"]) for b in bins]},
            charts.Axes(f"Distance to the nearest neighbor, stage {stage}", "distance", "images"),
        )
        out.append({"stage": stage, "id": stage.replace(" ", "-"), "bins": bins, "svg": svg})
    return out


def _stages_of(rows: list[dict]) -> list[str]:
    """The rows' stages (or labels: model and stage), pixels first, then each model's in pass order."""
    models: dict[str, int] = {}
    for r in rows:
        models.setdefault(r.get("model") or "", len(models))

    def place(r: dict) -> tuple:  # the model counts only where the label names it
        model = models[r.get("model") or ""] if _label(r) != r["stage"] else 0
        return r["stage"] != "first", model, STAGE_ORDER.index(r["stage"])

    order = {_label(r): place(r) for r in rows}
    return sorted(order, key=order.__getitem__)


def confusion(rows: list[dict]) -> list[dict]:
    """report_confusion per stage as a matrix: {"stage", "rows" (true labels), "labels" (every label
    seen, the columns), "names" (label -> class), "cells": {(true, predicted): n}, "max"}."""
    out = []
    for stage in _stages_of(rows):
        mine = [r for r in rows if _label(r) == stage]
        labels = {r["true_label"]: r["true_class"] for r in mine}
        labels.update({r["predicted_label"]: r["predicted_class"] or str(r["predicted_label"]) for r in mine})
        order = sorted(labels)
        cells = {(r["true_label"], r["predicted_label"]): r["n"] for r in mine}
        true_labels = sorted({r["true_label"] for r in mine})
        out.append(
            {
                "stage": stage,
                "id": stage.replace(" ", "-"),
                "rows": true_labels,
                "labels": order,
                "names": labels,
                "cells": cells,
                "max": max(cells.values()),
            }
        )
    return out


def class_accuracy_chart(rows: list[dict]) -> str:
    stages = _stages_of(rows)
    classes: dict[int, str] = {}
    for r in rows:
        classes.setdefault(r["label"], r["class"])
    by = {(_label(r), r["label"]): float(r["accuracy_pct"]) for r in rows}
    return charts.bar_chart(
        [classes[c] for c in sorted(classes)],
        {s: [by.get((s, c)) for c in sorted(classes)] for s in stages},
        charts.Axes(
            "Accuracy per class",
            "true class",
            "accuracy %",
            y_max=100.0,
            width=max(charts.WIDTH, 60 * len(classes) + 220),
        ),
    )


def parse_ids(values: list[str]) -> list[int]:
    """?ids=1,2 or ?ids=1&ids=2 (the /runs form's checkboxes) as run ids, in order, once each."""
    out: list[int] = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit():
                abort(400, description=f"not a run id: {part!r}")
            if int(part) not in out:
                out.append(int(part))
    return out


def accuracy_by_k_chart(rows: list[dict]) -> str:
    """report_accuracy_by_k as lines: accuracy against k, one line per stage and vote."""
    series: dict[str, list[tuple[float, float, str]]] = {}
    for row in rows:
        series.setdefault(f"{_label(row)} {row['vote']}", []).append(
            (float(row["k"]), float(row["accuracy_pct"]), f"k={row['k']}")
        )
    return charts.line_chart(series, charts.Axes("Accuracy by k and vote, one search", "k", "accuracy %"), labels=False)


def create_app(store: Store, k: int = 5, learned: bool = False) -> Flask:
    """The app: `k` neighbors per stage for each classified image."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES

    settings = SearchSettings(k=k, learned=learned)
    stored_stages, samples = store.stored_stage_names, store.samples

    @app.context_processor
    def nav() -> dict:
        return {"nav": NAV, "fmt": charts.fmt}

    def page(template: str, status: int = 200, **values: Any) -> tuple[str, int]:
        return render_template(template, **values), status

    @app.errorhandler(ClipvdbError)
    def clipvdb_error(exc: ClipvdbError):
        return render_template("page.html", error=str(exc), stages=stored_stages(), samples=[]), 400

    @app.errorhandler(psycopg.OperationalError)
    def database_lost(exc: psycopg.OperationalError):
        # the request's connection died (its backend terminated, the server restarted): one line on
        # the page and in the log, no traceback; the pool replaces the connection for the next request
        text = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        msg = f"lost the database connection ({text}); try again"
        app.logger.error("clipvdb: %s %s: %s", request.method, request.path, msg)
        return render_template("page.html", error=msg, stages=[], samples=[]), 503

    @app.errorhandler(413)
    def too_large(_exc):
        msg = f"upload is larger than {MAX_UPLOAD_BYTES // 2**20} MiB; send a smaller image"
        return render_template("page.html", error=msg, stages=stored_stages(), samples=[]), 413

    @app.errorhandler(404)
    def not_found(exc):
        return page("notfound.html", 404, heading="Not found", message=exc.description or "no such page")

    @app.errorhandler(400)
    def bad_request(exc):
        return page("notfound.html", 400, heading="Bad request", message=exc.description or "bad request")

    @app.get("/")
    def index():
        return render_template("page.html", stages=stored_stages(), samples=samples(), k=k)

    @app.route("/classify", methods=["GET", "POST"])
    def classify():
        stages = parse_stages(request.values.getlist("stage") or stored_stages())
        if request.method == "POST":
            upload = request.files.get("image")
            if upload is None or not upload.filename:
                raise ImageError("choose an image file to upload")
            data = upload.read()
            name = Path(upload.filename).name or "upload"
        else:
            image_id = request.args.get("image_id", type=int)
            if image_id is None:
                abort(400)
            data = store.image_png(image_id)
            name = f"stored image {image_id}"
        img = load_image(data, name)  # validated like ingest input
        preds = store.classify([img], stages, settings)
        for p in preds:
            p.image = name
        buf = io.BytesIO()
        img.resize((96, 96)).save(buf, "PNG")
        preview = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        return render_template(
            "page.html",
            stages=stored_stages(),
            samples=samples(),
            predictions=preds,
            query_name=name,
            preview=preview,
            k=k,
        )

    @app.get("/search")
    def text_search():
        q = (request.args.get("q") or "").strip()
        if not q:
            raise ImageError("type something to search for")
        n = request.args.get("k", 10, type=int)
        if n is None or not 1 <= n <= 100:
            raise ImageError("k must be a number from 1 to 100")
        hits = store.retrieve(q, k=n)
        return render_template("page.html", stages=stored_stages(), samples=samples(), hits=hits, query=q, k=k)

    @app.get("/image/<int:image_id>.png")
    def image(image_id: int):
        return Response(store.image_png(image_id, scale=3), mimetype="image/png")

    @app.get("/health")
    def health():
        store.stored_stage_names()
        return {"ok": True}

    # ------------------------------------------------------------ reports

    @app.get("/runs")
    def runs():
        rows = store.runs()
        # a column per stage (a run of several models: per model and stage too)
        shown = {k for r in rows for k in r.accuracy}
        stages = sorted(shown, key=lambda k: (STAGE_ORDER.index(k.split()[-1]), " " in k, k))
        allowed = (*RUN_SORTS, *(f"accuracy_{s}" for s in stages))
        column = request.args.get("sort", "run_id")
        if column not in allowed:
            abort(400, description=f"cannot sort by {column!r}; choose from {', '.join(allowed)}")
        desc = request.args.get("desc", "1" if column == "run_id" else "0") == "1"
        return page(
            "runs.html",
            runs=sorted_runs(rows, column, desc),
            stages=stages,
            sort=column,
            desc=desc,
            index_settings=index_settings,
        )

    @app.get("/runs/compare")
    def compare():
        ids = parse_ids(request.args.getlist("ids"))
        if not ids:
            abort(400, description="choose runs to compare: /runs/compare?ids=1,2")
        if len(ids) > MAX_COMPARE:
            abort(400, description=f"compare at most {MAX_COMPARE} runs at a time")
        found = [store.reports(i, ("report_runs", "report_accuracy", "report_timing")) for i in ids]
        missing = [r.run_id for r in found if not r["report_runs"]]
        if missing:
            abort(404, description=f"no run {missing[0]}; /runs lists the stored runs")
        # a series per run and model, named by its model: every model x stage on one chart
        label_rows(
            [r[v] for r in found for v in ("report_accuracy", "report_timing")],
            any(several_models(r["report_accuracy"]) for r in found),
        )
        svg, points = trade_off(
            {
                f"run {r['run_id']}"
                + ("" if several_models(r["report_accuracy"]) else f" {r['report_runs'][0]['model']}"): (
                    r["report_accuracy"],
                    r["report_timing"],
                )
                for r in found
            }
        )
        stages = _stages_of([a for r in found for a in r["report_accuracy"]])
        cells = {(r["run_id"], a["shown_as"]): {"accuracy": a} for r in found for a in r["report_accuracy"]}
        for r in found:
            for t in r["report_timing"]:
                cells.setdefault((r["run_id"], t["shown_as"]), {})["timing"] = t
        return page(
            "compare.html",
            runs=[r["report_runs"][0] for r in found],
            at_once={r["run_id"]: ran_at_once(r["report_timing"]) for r in found},
            timed={r["run_id"]: (r["report_timing"][0]["timing"] if r["report_timing"] else "") for r in found},
            stages=stages,
            cells=cells,
            chart=svg,
            points=points,
            ms_per_image=ms_per_image,
            index_settings=index_settings,
        )

    @app.get("/runs/<int:run_id>")
    def run(run_id: int):
        r = store.run(run_id)
        if r is None:
            abort(404, description=f"no run {run_id}; /runs lists the stored runs")
        several = several_models(r["report_accuracy"])
        label_rows([r[view] for view in r.report.views], several)
        timing = {t["shown_as"]: t for t in r.report["report_timing"]}
        svg, points = trade_off({f"run {run_id}": (r["report_accuracy"], r["report_timing"])})
        return page(
            "run.html",
            r=r,
            run=r.run,
            timing=timing,
            at_once=ran_at_once(r["report_timing"]),
            timing_note=timing_note(r["report_timing"]),
            chart=svg,
            points=points,
            histograms=histograms(r["report_distance_histogram"]),
            confusion=confusion(r["report_confusion"]),
            class_chart=class_accuracy_chart(r["report_class_accuracy"]) if r["report_class_accuracy"] else "",
            by_k_chart=accuracy_by_k_chart(r["report_accuracy_by_k"]) if r["report_accuracy_by_k"] else "",
            ms_per_image=ms_per_image,
            index_settings=index_settings,
            several=several,
        )

    @app.get("/duplicates")
    def duplicates():
        scans, pairs = store.duplicate_pairs(MAX_DUPLICATES_SHOWN)
        return page("duplicates.html", scans=scans, pairs=pairs)

    @app.get("/clusters")
    def clusters():
        found = store.clusterings()
        chosen_id = request.args.get("id", type=int)
        chosen = next((c for c in found if c.id == chosen_id), None) if chosen_id is not None else None
        if chosen_id is not None and chosen is None:
            abort(404, description=f"no clustering {chosen_id}; /clusters lists the stored ones")
        chosen = chosen or (found[0] if found else None)
        svg = ""
        if found:
            shown = list(reversed(found))  # oldest first, left to right
            svg = charts.bar_chart(
                [f"#{c.id} {c.method}" for c in shown],
                {
                    "purity": [c.purity for c in shown],
                    "ARI": [c.adjusted_rand_index for c in shown],
                    "NMI": [c.normalized_mutual_info for c in shown],
                },
                charts.Axes("Clusters against labels", "clustering", "score", y_max=1.0),
            )
        grid = store.cluster_members(chosen.id) if chosen else []
        return page("clusters.html", clusterings=found, chosen=chosen, grid=grid, chart=svg)

    @app.get("/experiments")
    def experiments():
        rows = store.experiments()
        groups: dict[int, list[ExperimentRow]] = {}
        for e in rows:
            groups.setdefault(e.experiment_id, []).append(e)
        shown = []
        for exp_id, mine in groups.items():
            series: dict[str, list[tuple[float, float, str]]] = {}
            for e in sorted(mine, key=lambda e: (e.size, e.mean_ms or 0.0)):
                if e.mean_ms is not None and e.recall_at_1 is not None:
                    series.setdefault(f"{e.size:,} stored", []).append((e.mean_ms, e.recall_at_1, setting_label(e)))
            svg = charts.line_chart(
                series,
                charts.Axes(
                    f"Experiment {exp_id}: recall@1 against ms per query, stage {mine[0].stage}",
                    "mean ms per query",
                    "recall@1",
                    y_max=1.0,
                ),
                lines=False,
                labels=False,
            )
            shown.append({"id": exp_id, "rows": mine, "chart": svg, "first": mine[0]})
        return page("experiments.html", experiments=shown, setting_label=setting_label)

    @app.get("/data")
    def data():
        overview = store.data_overview()
        stages = overview.stages
        svg = ""
        if stages:
            svg = charts.bar_chart(
                [s.stage for s in stages],
                {"bytes per row": [s.bytes_per_row for s in stages]},
                charts.Axes("Bytes per stored row (table, TOAST and indexes)", "stage", "bytes per row"),
            )
        return page("data.html", o=overview, chart=svg)

    return app


def setting_label(e: ExperimentRow) -> str:
    """An experiment row's setting: exact, ivfflat probes=10, hnsw ef_search=40."""
    params = e.params or {}
    shown = ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("lists", "m", "ef_construction"))
    return f"{e.method} {shown}".strip()


def serve(store: Store, host: str = "127.0.0.1", port: int = 8000, k: int = 5, learned: bool = False) -> None:
    from werkzeug.serving import run_simple

    run_simple(host, port, create_app(store, k, learned), threaded=True)
