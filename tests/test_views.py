"""The report views return the right numbers on hand-made predictions; `clipvdb report` picks a run
(--run) and a view (--view), and `clipvdb plot --run` plots that run."""

import json

import pytest

from clipvdb import reports


@pytest.fixture
def run(conn):
    """Dataset with classes a, b; run 1 (complete) with 4 predictions at stage first and 2 at second;
    run 2 still 'running' (must stay out of every view)."""
    conn.execute("INSERT INTO datasets (id, name, source) VALUES (1, 'd', '/x')")
    conn.execute("INSERT INTO classes VALUES (1, 0, 'a'), (1, 1, 'b')")
    for i, label in enumerate([0, 0, 1, 1], start=1):
        conn.execute(
            "INSERT INTO images (id, dataset_id, split, label, source, sha256) VALUES (%s, 1, 'test', %s, %s, %s)",
            (i, label, f"img{i}", bytes(32)),
        )
    conn.execute(
        "INSERT INTO eval_runs (id, dataset_id, split, stages, model, weights, k, params, status) VALUES "
        "(1, 1, 'test', '{first,second}', 'pixels', 'none', 1, %s, 'complete'), "
        "(2, 1, 'test', '{first}', 'pixels', 'none', 1, '{}', 'running')",
        (json.dumps({"exact": True}),),
    )
    # run 1, first: image 1 right (d=1), 2 wrong (d=3), 3 right (d=2), 4 wrong (d=5)
    rows = [
        (1, "first", 1, 0, 0, 1.0, 10.0, 2.0),
        (1, "first", 2, 1, 0, 3.0, 20.0, 4.0),
        (1, "first", 3, 1, 1, 2.0, 30.0, 6.0),
        (1, "first", 4, 0, 1, 5.0, 40.0, 8.0),
        (1, "second", 1, 0, 0, 0.5, 1.0, 1.0),
        (1, "second", 3, 0, 1, 0.5, 3.0, 1.0),
        (2, "first", 1, 1, 0, 9.0, 1.0, 1.0),
    ]
    for r in rows:
        conn.execute(
            "INSERT INTO predictions (run_id, stage, image_id, predicted, true_label, distance, encode_ms, query_ms) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            r,
        )
    conn.commit()
    return 1


def test_accuracy(conn, run):
    rows = reports.fetch(conn, "report_accuracy", None)
    assert [(r["run_id"], r["stage"], r["n"], r["correct"], r["accuracy_pct"]) for r in rows] == [
        (1, "first", 4, 2, 50.0),
        (1, "second", 2, 1, 50.0),
    ]


def test_timing(conn, run):
    rows = {r["stage"]: r for r in reports.fetch(conn, "report_timing", 1)}
    first = rows["first"]
    assert first["encode_ms_mean"] == pytest.approx(25.0)
    assert first["encode_ms_p50"] == pytest.approx(25.0)
    assert first["encode_ms_p95"] == pytest.approx(38.5)  # 30 + 0.85 * 10
    assert first["query_ms_mean"] == pytest.approx(5.0)
    assert first["query_s_total"] == pytest.approx(0.020)
    assert rows["second"]["encode_ms_mean"] == pytest.approx(2.0)


def test_confusion(conn, run):
    rows = reports.fetch(conn, "report_confusion", 1)
    cells = {(r["stage"], r["true_class"], r["predicted_class"]): r["n"] for r in rows}
    assert cells == {
        ("first", "a", "a"): 1,
        ("first", "a", "b"): 1,
        ("first", "b", "b"): 1,
        ("first", "b", "a"): 1,
        ("second", "a", "a"): 1,
        ("second", "b", "a"): 1,
    }


def test_class_accuracy(conn, run):
    rows = reports.fetch(conn, "report_class_accuracy", 1)
    got = {(r["stage"], r["class"]): (r["n"], r["correct"], r["accuracy_pct"]) for r in rows}
    assert got == {
        ("first", "a"): (2, 1, 50.0),
        ("first", "b"): (2, 1, 50.0),
        ("second", "a"): (1, 1, 100.0),
        ("second", "b"): (1, 0, 0.0),
    }


def test_distance_histogram(conn, run):
    rows = [r for r in reports.fetch(conn, "report_distance_histogram", 1) if r["stage"] == "first"]
    # distances 1..5 in 20 bins of 0.2: d=1 -> bin 1, d=2 -> bin 6, d=3 -> bin 11, d=5 (max) -> bin 20
    got = {r["bin"]: (r["n_correct"], r["n_wrong"]) for r in rows}
    assert got == {1: (1, 0), 6: (1, 0), 11: (0, 1), 20: (0, 1)}
    assert rows[0]["bin_lo"] == pytest.approx(1.0)
    assert rows[-1]["bin_hi"] == pytest.approx(5.0)
    # all distances equal at stage second: one bin, no division by zero
    second = [r for r in reports.fetch(conn, "report_distance_histogram", 1) if r["stage"] == "second"]
    assert [(r["bin"], r["n_correct"], r["n_wrong"]) for r in second] == [(1, 1, 1)]


def test_runs_view_and_running_runs_excluded(conn, run):
    runs = reports.fetch(conn, "report_runs", None)
    assert [(r["run_id"], r["status"], r["images"]) for r in runs] == [(1, "complete", 4), (2, "running", 1)]
    for view in reports.VIEWS[1:]:
        assert all(r["run_id"] == 1 for r in reports.fetch(conn, view, None)), view


def test_report_run_view_and_unknown_view_and_plot_run(cli, syn_data, tmp_path):
    w = ["--workers", "0"]
    cli("ingest", "--stage", "first", "--data", syn_data, *w)
    r1 = json.loads(cli("evaluate", "--stage", "first", "--data", syn_data, "--limit", "4", "--json", *w).stdout)
    r2 = json.loads(cli("evaluate", "--stage", "first", "--data", syn_data, "--limit", "6", "--json", *w).stdout)
    one = json.loads(cli("report", "--run", r1["run_id"], "--view", "report_accuracy", "--json").stdout)
    assert one["run_id"] == r1["run_id"] and set(one) == {"run_id", "report_accuracy"}
    assert one["report_accuracy"][0]["n"] == 4
    latest = json.loads(cli("report", "--view", "report_accuracy", "--json").stdout)
    assert latest["run_id"] == r2["run_id"] and latest["report_accuracy"][0]["n"] == 6
    bad = cli("report", "--view", "report_nothing", expect=2)
    assert "unknown view 'report_nothing'" in bad.output and len(bad.output.strip().splitlines()) == 1
    paths = cli("plot", "--run", r1["run_id"], "--out", tmp_path / "p").output.split()
    assert all(f"run{r1['run_id']}_" in p for p in paths) and len(paths) == 2
