"""The benchmark code cannot rot: --quick runs every item on generated data. Structure only, no timings."""

import re
import time


def test_quick_benchmark_writes_every_table(tmp_path):
    from bench.__main__ import main

    out = main(["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "B.md")])
    text = out.read_text()
    for heading in (
        "## 1. Stage first",
        "## 2. Bulk load",
        "## 3. Encoder",
        "## 4. The study's table",
        "## 5. Scale",
        "## 6. Load",
        "## 8. Storage",
        "## 9. Half precision",
    ):
        assert heading in text
    assert "PostgreSQL 17" in text and "pgvector 0.8" in text and "cores" in text
    assert "Baseline (in-process exact 1-NN" in text and "time / baseline time" in text
    assert re.search(r"\| pgvector exact \(l2_distance scan\) \| 1 \| 1 \| 20 \| [\d.]+ \| 1\.000 \|", text), text
    assert re.search(r"\| projected hnsw m=16 efc=64 project=128 \(variance kept [\d.]+\) ef_search=40 \|", text)
    assert re.search(r"\| projected hnsw ef_search=40, all queries \| 100 \| 2 \| 200 \|", text), text
    assert re.search(r"Goal check \((met|not met)\): fastest full pass", text)
    for stage, column in (
        ("first", "halfvec(3072)"),
        ("second", "halfvec(1024)"),
        ("third", "halfvec(2048)"),
        ("origin", "halfvec(1024)"),
    ):
        assert re.search(rf"\| {stage} \| {re.escape(column)} \| [\d,]+ \| [\d.]+ \| [\d,.]+ \|", text), stage
    assert re.search(r"\| first \| halfvec\(3072\) \| [^|]+\| [^|]+\| [^|]+\| ivfflat project=64 \|", text)
    assert re.search(r"\| [\d,]+ \| projected hnsw, project=128 ef_search=100 \(build \d+ s\) \| [\d.]+ \|", text)
    for stage, column in (("second", "halfvec(1024)"), ("third", "halfvec(2048)")):
        assert re.search(rf"\| {stage} \| {re.escape(column)} \| 10 \| 40 \| \d+ \| \d+ \|", text), stage
    assert "| all four |" in text and "channels_last" in text and "bfloat16 autocast" in text
    assert "| freed memory kept (the default) |" in text and "Embeddings identical bit for bit: yes" in text
    assert re.search(r"\| halfvec\(3072\), storage plain \| [\d,.]+ \| 20 \| [\d.]+ \|", text)
    assert re.search(r"\| vector\(3072\), storage external \| [\d,.]+ \| 20 \| 1\.000 \|", text)
    load_row = re.search(r"\| 2 \| ([\d,]+) \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ \| (\d+) \|", text)
    assert load_row and int(load_row.group(1).replace(",", "")) > 0 and load_row.group(2) == "0"


def test_accuracy_item_runs_with_given_weights_and_labels_random_ones(tmp_path):
    from bench.__main__ import main

    out = main(
        [
            "--quick",
            "--items",
            "7",
            "--model",
            "tiny",
            "--pretrained",
            "random",
            "--accuracy-train",
            "20",
            "--accuracy-test",
            "10",
            "--work",
            str(tmp_path / "w"),
            "--out",
            str(tmp_path / "A.md"),
        ]
    )
    text = out.read_text()
    assert "## 7. Accuracy per stage" in text and "RANDOM weights" in text
    for stage in ("first", "second", "third", "origin"):
        assert re.search(rf"\| {stage} \| 10 \| [\d.]+ \| [\d.]+ \|", text), stage
    assert re.search(r"\| third \| halfvec\(2048\) \| 10 \| 20 \| \d+ \| \d+ \|", text), text


def test_recall_item_finds_every_exact_neighbour_when_every_list_is_probed(syn_data):
    from bench.recall import main

    settings = ["probes=4", "probes=1,candidates=1", "exact=1"]
    start = time.perf_counter()
    rows = main(["--data", str(syn_data), "--project", "16", "--lists", "4", *settings])
    wall = time.perf_counter() - start
    assert [r["settings"] for r in rows] == settings
    assert rows[0]["recall_at_1"] == 1.0
    assert rows[2]["recall_at_1"] == 1.0  # exact search is the in-process exact 1-NN
    # recall is hits over the 20 test images (2 per class): a whole number of twentieths
    hits = rows[1]["recall_at_1"] * 20
    assert abs(hits - round(hits)) < 1e-9 and 0 <= round(hits) <= 20, rows[1]
    # each setting's timed loop is one part of the call, apart from the others (rounded to 10 ms)
    assert sum(r["seconds"] for r in rows) < wall, (rows, wall)


def test_a_block_is_replaced_between_its_markers_and_the_notes_around_it_stay(tmp_path):
    from bench.markdown import replace_block

    doc = tmp_path / "B.md"
    doc.write_text("# title\n\nnotes before\n\n<!-- bench:x -->\nold\n<!-- /bench:x -->\n\nnotes after\n")
    replace_block(doc, "x", "new figures\n")
    replace_block(doc, "x", "newer figures")  # again: one block, not two
    text = doc.read_text()
    assert text == "# title\n\nnotes before\n\n<!-- bench:x -->\nnewer figures\n<!-- /bench:x -->\n\nnotes after\n"
    replace_block(doc, "y", "appended")
    assert doc.read_text().endswith("<!-- bench:y -->\nappended\n<!-- /bench:y -->\n")


def test_headline_times_the_commands_and_writes_both_blocks(syn_data, tmp_path):
    from bench.headline import main

    for name in ("BENCHMARKS.md", "README.md"):
        (tmp_path / name).write_text(f"# {name}\n\n<!-- bench:headline -->\n<!-- /bench:headline -->\n\nhand notes\n")
    rows = main(["--data", str(syn_data), "--out", str(tmp_path / "h.json"), "--write", "--docs", str(tmp_path)])
    assert rows["train"] == 60 and rows["test"] == 20
    assert rows["ingest"]["inserted"] == {"first": 60}
    assert rows["evaluate"]["stages"]["first"]["n"] == 20
    assert rows["baseline_s"] > 0 and rows["ratios"]["evaluate"] == rows["evaluate_s"] / rows["baseline_s"]
    assert 0 < rows["help_s"] < rows["ingest_s"] and rows["classify_s"] > 0
    bench_md = (tmp_path / "BENCHMARKS.md").read_text()
    assert f"{rows['ingest_s']:.1f} s" in bench_md and f"{rows['ratios']['ingest']:.2f} x" in bench_md
    assert bench_md.count("**met**") + bench_md.count("**not met**") == 4 and bench_md.endswith("hand notes\n")
    readme = (tmp_path / "README.md").read_text()
    assert f"**{rows['ratios']['evaluate']:.2f}x**" in readme and readme.endswith("hand notes\n")


def _peers_result(clipvdb_total: float) -> dict:
    cli = {
        "baseline_s": 20.0,
        "ingest_s": clipvdb_total / 2,
        "evaluate_s": clipvdb_total / 2,
        "evaluate": {"stages": {"first": {"accuracy_pct": 35.1}}},
    }
    rows = [
        {"peer": "faiss IndexFlatL2 (exact)", "load_s": 0.3, "query_s": 14.0, "queries": 100, "accuracy": 35.3},
        {"peer": "slowdb (embedded)", "load_s": 40.0, "query_s": 10.0, "queries": 10, "accuracy": 33.0},
        {"peer": "lancedb_row", "error": "ImportError: no module"},
    ]
    for r in rows:
        if "query_s" in r:
            r["query_s_all"] = r["query_s"] * 100 / r["queries"]
            r["total_s_all"] = r["load_s"] + r["query_s_all"]
    return {
        "machine": "m",
        "baseline_s": 20.0,
        "baseline_accuracy": 35.3,
        "queries_all": 100,
        "rows": rows,
        "clipvdb": cli,
    }


def test_peers_block_compares_every_peer_with_the_clipvdb_cli():
    from bench.peers import render

    text = render(_peers_result(20.0))
    assert "| **clipvdb CLI**" in text and "| 10.0 s | 10.0 s | 20.0 s | 35.10 % |" in text
    assert "100.0 s extrapolated (10 in 10.0 s)" in text and "33.00 % of the first 10" in text
    assert "failed: ImportError: no module" in text
    assert "Against slowdb: clipvdb's total is 7.0x faster, at 35.10 % against its 33.00 % over its first 10" in text
    assert "(ahead)" in text and "Gap to faiss IndexFlatL2 (exact)" in text
    assert "(not ahead)" in render(_peers_result(200.0))


def test_server_cpu_counts_a_homes_servers_and_their_ended_backends(tmp_path):
    """bench.cluster's CPU per query: what a home's servers spent, by data directory, a backend's
    time kept after it exits, another home's servers not counted."""
    import os

    import psycopg

    from bench.common import _cpu_seconds, server_cpu_s
    from clipvdb import embedded

    home = tmp_path / "home"
    url = embedded.start(home)
    tick = 1 / os.sysconf("SC_CLK_TCK")
    try:
        before = server_cpu_s(home)
        assert list(before) == ["pgdata"]
        with psycopg.connect(url) as conn:  # the backend exits with the connection
            conn.execute("SELECT count(*) FROM generate_series(1, 4000000) g WHERE g % 7 = 0").fetchone()
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            backend = _cpu_seconds(pid)
        assert backend > 0.05  # the query took CPU time
        for _ in range(50):  # until the postmaster has reaped the backend
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.05)
        spent = server_cpu_s(home)["pgdata"] - before["pgdata"]
        assert spent >= backend - tick, (spent, backend)
        assert server_cpu_s(tmp_path / "hom") == {}  # a path prefix of this home is another home
    finally:
        embedded.stop(home)
