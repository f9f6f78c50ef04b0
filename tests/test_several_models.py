"""One run covering several models: `evaluate --model A,B` (Store.compare) records ONE run in which
each model answers from its own stored vectors, the models taking turns over the same images; the
report views, the plot and the run pages give a row per model and stage."""

import json
import time
from pathlib import Path

import psycopg
import pytest

from clipvdb import Store
from clipvdb.demo import SHIPPED_MODEL
from clipvdb.errors import EmptyStageError, UsageError

MODELS = ["tiny", str(SHIPPED_MODEL)]
NAMES = ["tiny", "cnn"]  # as the database names them
STAGES = "first,second,third"
ASKED = {"split": "test", "exact": True, "ks": (1, 3), "workers": 0}


def _ingest(db_url: str, syn_data: Path, models=MODELS) -> None:
    for m in models:
        with Store(db_url, model=m) as store:
            store.ingest(syn_data, STAGES, workers=0)


def _rows(db_url: str, sql: str, args=()) -> list[dict]:
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as c:
        return c.execute(sql, args).fetchall()


def _answers(db_url: str, run_id: int, model_no: int) -> list[tuple]:
    return [
        (r["stage"], r["image_id"], r["predicted"], r["neighbor_id"], round(r["distance"], 5))
        for r in _rows(
            db_url,
            "SELECT * FROM predictions WHERE run_id = %s AND model_no = %s ORDER BY stage, image_id",
            (run_id, model_no),
        )
    ]


@pytest.fixture
def both(db_url, syn_data):
    """Both models' vectors stored; one run of both (exact search, k 1 and 3) and each model alone."""
    _ingest(db_url, syn_data)
    with Store(db_url, model=MODELS[0]) as store:
        store.encoder_for(store.session.stages(STAGES))
        start = time.perf_counter()
        together = store.compare(syn_data, MODELS, STAGES, **ASKED)
        took = time.perf_counter() - start
    alone = []
    for m, stages in zip(MODELS, (STAGES, "second,third"), strict=True):
        with Store(db_url, model=m) as store:
            alone.append(store.evaluate(syn_data, stages, **ASKED))
    return together, alone, took


def test_one_run_of_two_models_answers_as_each_model_alone(db_url, both):
    together, alone, _ = both
    assert len({r.run_id for r in together}) == 1 and [r.model for r in together] == NAMES
    run_id = together[0].run_id
    # stage first, pixels whatever the model, is answered once, in the first model's turn
    assert list(together[0].stages) == ["first", "second", "third"] and list(together[1].stages) == ["second", "third"]
    for no, single in enumerate(alone):
        assert _answers(db_url, run_id, no) == _answers(db_url, single.run_id, 0) != []
    # the report views: a row per model and stage, each as that model's run alone gives it
    for view, key in (
        ("report_accuracy", ("stage", "n", "correct", "accuracy_pct", "space", "model", "weights")),
        ("report_accuracy_by_k", ("stage", "k", "vote", "n", "correct", "accuracy_pct", "model", "weights")),
        ("report_class_accuracy", ("stage", "label", "n", "correct", "model")),
        ("report_confusion", ("stage", "true_label", "predicted_label", "n", "model")),
        ("report_distance_summary", ("stage", "outcome", "n", "model")),
        ("report_distance_histogram", ("stage", "bin", "n_correct", "n_wrong", "model")),
    ):
        shown = sorted(
            tuple(r[c] for c in key) for r in _rows(db_url, f"SELECT * FROM {view} WHERE run_id = %s", (run_id,))
        )
        each = sorted(
            tuple(r[c] for c in key)
            for single in alone
            for r in _rows(db_url, f"SELECT * FROM {view} WHERE run_id = %s", (single.run_id,))
        )
        assert shown == each != [], view
    models = {
        (r["model"], r["stage"]) for r in _rows(db_url, "SELECT * FROM report_accuracy WHERE run_id = %s", (run_id,))
    }
    assert models == {("pixels", "first"), ("tiny", "second"), ("tiny", "third"), ("cnn", "second"), ("cnn", "third")}
    run = _rows(db_url, "SELECT * FROM report_runs WHERE run_id = %s", (run_id,))[0]
    assert run["model"] == "tiny,cnn" and run["stages"] == ["first", "second", "third"] and run["images"] > 0
    assert sorted(run["index"]) == sorted(NAMES) and set(run["index"]["cnn"]) == {"second", "third"}


def test_each_model_is_timed_on_its_own_turn(db_url, both):
    together, _, took = both
    run_id = together[0].run_id
    params = _rows(db_url, "SELECT params FROM eval_runs WHERE id = %s", (run_id,))[0]["params"]
    turns = params["models"]
    assert [t["model"] for t in turns] == NAMES and [t["stages"] for t in turns] == [
        ["first", "second", "third"],
        ["second", "third"],
    ]
    assert [t["wall_s"] for t in turns] == [r.totals["wall_s"] for r in together]
    assert params["wall_s"] == pytest.approx(sum(t["wall_s"] for t in turns), abs=0.002)
    # each turn on its own clock: the second's idle time does not hold the first turn, and both
    # turns' times add up to no more than the whole call took
    assert turns[1]["other_s"] < turns[0]["wall_s"] / 2 and 0 < params["wall_s"] <= took
    timing = _rows(db_url, "SELECT * FROM report_timing WHERE run_id = %s", (run_id,))
    for no, name in enumerate(NAMES):
        mine = [t for t in timing if t["model"] == name or (no == 0 and t["stage"] == "first")]
        walls = [t["wall_ms_per_image"] for t in mine]
        assert walls == [pytest.approx(1000 * turns[no]["wall_s"] / mine[0]["n"])] * len(mine) and len(mine) == 3 - no
        # the wall shares of one turn add up to its wall time: decode + the deepest pass + every
        # stage's query + store + other
        parts = (
            mine[0]["decode_ms_mean"] + max(t["encode_ms_mean"] for t in mine) + sum(t["query_ms_mean"] for t in mine)
        )
        parts += mine[0]["store_ms_mean"] + mine[0]["other_ms_mean"]
        # store, other and wall are kept in seconds to 3 places: up to 1.5 ms over the turn's images
        assert parts == pytest.approx(mine[0]["wall_ms_per_image"], rel=0.01, abs=2.0 / mine[0]["n"])


def test_a_run_of_several_models_refuses_what_it_cannot_hold(db_url, syn_data):
    _ingest(db_url, syn_data, MODELS[:1])
    with Store(db_url, model="tiny") as store:
        with pytest.raises(UsageError, match="model tiny is named twice"):
            store.compare(syn_data, ["tiny", "tiny"], "second", **ASKED)
        with pytest.raises(UsageError, match="has no stage to answer: stage first is pixels"):
            store.compare(syn_data, MODELS, "first", **ASKED)
        # the second model has stored nothing: refused before the run is recorded
        with pytest.raises(EmptyStageError):
            store.compare(syn_data, MODELS, "second", **ASKED)
    assert _rows(db_url, "SELECT count(*) AS n FROM eval_runs")[0]["n"] == 0


def test_evaluate_takes_a_list_of_models_as_one_run(cli, db_url, syn_data, tmp_path):
    _ingest(db_url, syn_data)
    models = ",".join(MODELS)
    runs = json.loads(
        cli("evaluate", "--stage", "second", "--data", syn_data, "--model", models, "--workers", "0", "--json").stdout
    )
    assert [r["model"] for r in runs] == NAMES and runs[0]["run_id"] == runs[1]["run_id"]
    run_id = runs[0]["run_id"]
    shown = cli("evaluate", "--stage", "second", "--data", syn_data, "--model", models, "--workers", "0").stdout
    assert "run " in shown and ": tiny on " in shown and ": cnn on " in shown
    table = cli("report", "--run", run_id, "--view", "report_accuracy").stdout
    assert "tiny" in table and "cnn" in table
    # one run, one trade-off chart of every model x stage, and a histogram per model and stage
    paths = [Path(p).name for p in cli("plot", "--run", run_id, "--out", tmp_path / "p").output.split()]
    assert (
        f"run{run_id}_tiny_second_distance_hist.png" in paths and f"run{run_id}_cnn_second_distance_hist.png" in paths
    )
    assert paths[-1] == f"runs{run_id}_tradeoff.png"
    from clipvdb.plots import tradeoff_points

    with Store(db_url) as store:
        points = tradeoff_points([store.reports(run_id)])
    assert [(p["model"], p["stage"]) for p in points] == [("tiny", "second"), ("cnn", "second")]
    assert [p["accuracy"] for p in points] == [
        pytest.approx(r["stages"]["second"]["accuracy_pct"], abs=0.01) for r in runs
    ]


def test_the_run_pages_show_every_model_and_stage(db_url, syn_data, both):
    from clipvdb.web import create_app

    together, alone, _ = both
    run_id = together[0].run_id
    with Store(db_url) as store:
        client = create_app(store).test_client()
        page = client.get(f"/runs/{run_id}").get_data(as_text=True)
        compared = client.get(f"/runs/compare?ids={run_id},{alone[1].run_id}").get_data(as_text=True)
    for label in ("pixels first", "tiny second", "tiny third", "cnn second", "cnn third"):
        assert f"<td>{label}</td>" in page, label
        assert f"<td>{label}</td>" in compared, label
    # the trade-off chart: a series per model of the run
    assert f">run {run_id} tiny<" in page and f">run {run_id} cnn<" in page
    assert 'id="hist-cnn-second"' in page and 'id="confusion-tiny-third"' in page
    assert f"<td>run {run_id} cnn</td>" in compared and f"<td>run {alone[1].run_id} cnn</td>" in compared
