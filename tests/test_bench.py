"""The benchmark code cannot rot: --quick runs every item on generated data. Structure only, no timings."""

import re


def test_quick_benchmark_writes_every_table(tmp_path):
    from bench.__main__ import main

    out = main(["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "B.md")])
    text = out.read_text()
    for heading in ("## 1. Stage first", "## 2. Bulk load", "## 3. Encoder", "## 4. The study's table", "## 5. Scale"):
        assert heading in text
    assert "PostgreSQL 17" in text and "pgvector 0.8" in text and "cores" in text
    assert "Baseline (in-process exact 1-NN" in text and "time / baseline time" in text
    assert re.search(r"\| pgvector exact \(l2_distance scan\) \| 1 \| 1 \| 20 \| [\d.]+ \| 1\.000 \|", text), text
    for stage in ("first", "second", "third", "origin"):
        assert re.search(rf"\| {stage} \| [\d,]+ \| [\d,]+ \| [\d.]+ \|", text), f"no load row for {stage}"
    assert "| all four |" in text and "channels_last" in text and "bfloat16 autocast" in text
