"""The benchmark code cannot rot: --quick runs every item on generated data. Structure only, no timings."""

import re


def test_quick_benchmark_writes_every_table(tmp_path):
    from bench.__main__ import main

    out = main(["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "B.md")])
    text = out.read_text()
    for heading in ("## 1. Stage first", "## 2. Bulk load", "## 3. Encoder", "## 4. The study's table", "## 5. Scale",
                    "## 6. Load", "## 8. Storage", "## 9. Half precision"):  # fmt: skip
        assert heading in text
    assert "PostgreSQL 17" in text and "pgvector 0.8" in text and "cores" in text
    assert "Baseline (in-process exact 1-NN" in text and "time / baseline time" in text
    assert re.search(r"\| pgvector exact \(l2_distance scan\) \| 1 \| 1 \| 20 \| [\d.]+ \| 1\.000 \|", text), text
    assert re.search(r"\| projected hnsw m=16 efc=64 project=128 \(variance kept [\d.]+\) ef_search=40 \|", text)
    assert re.search(r"\| projected hnsw ef_search=40, all queries \| 100 \| 2 \| 200 \|", text), text
    assert re.search(r"Goal check \((met|not met)\): fastest full pass", text)
    for stage, column in (("first", "halfvec(3072)"), ("second", "vector(1024)"), ("third", "halfvec(2048)"),
                          ("origin", "vector(1024)")):  # fmt: skip
        assert re.search(rf"\| {stage} \| {re.escape(column)} \| [\d,]+ \| [\d.]+ \| [\d,.]+ \|", text), stage
    assert re.search(r"\| first \| halfvec\(3072\) \| [^|]+\| [^|]+\| [^|]+\| ivfflat project=64 \|", text)
    assert re.search(r"\| [\d,]+ \| projected hnsw, project=128 ef_search=100 \(build \d+ s\) \| [\d.]+ \|", text)
    for stage, column in (("second", "vector(1024)"), ("third", "halfvec(2048)")):
        assert re.search(rf"\| {stage} \| {re.escape(column)} \| 10 \| 40 \| \d+ \| \d+ \|", text), stage
    assert "| all four |" in text and "channels_last" in text and "bfloat16 autocast" in text
    assert re.search(r"\| halfvec\(3072\), storage plain \| [\d,.]+ \| 20 \| [\d.]+ \|", text)
    assert re.search(r"\| vector\(3072\), storage external \| [\d,.]+ \| 20 \| 1\.000 \|", text)
    load_row = re.search(r"\| 2 \| ([\d,]+) \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ \| (\d+) \|", text)
    assert load_row and int(load_row.group(1).replace(",", "")) > 0 and load_row.group(2) == "0"


def test_accuracy_item_runs_with_given_weights_and_labels_random_ones(tmp_path):
    from bench.__main__ import main

    out = main(["--quick", "--items", "7", "--model", "tiny", "--pretrained", "random", "--accuracy-train", "20",
                "--accuracy-test",
                "10", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "A.md")])  # fmt: skip
    text = out.read_text()
    assert "## 7. Accuracy per stage" in text and "RANDOM weights" in text
    for stage in ("first", "second", "third", "origin"):
        assert re.search(rf"\| {stage} \| 10 \| [\d.]+ \| [\d.]+ \|", text), stage
    assert re.search(r"\| third \| halfvec\(2048\) \| 10 \| 20 \| \d+ \| \d+ \|", text), text


def test_recall_item_finds_every_exact_neighbour_when_every_list_is_probed(syn_data):
    from bench.recall import main

    rows = main(["--data", str(syn_data), "--project", "16", "--lists", "4", "probes=4", "probes=1,candidates=1"])
    assert [r["settings"] for r in rows] == ["probes=4", "probes=1,candidates=1"]
    assert rows[0]["recall_at_1"] == 1.0
    assert 0.0 <= rows[1]["recall_at_1"] <= 1.0 and rows[1]["seconds"] >= 0
