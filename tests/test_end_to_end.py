"""End to end through the CLI on a generated image-folder set, all four stages, the tiny encoder
(the RN50 code has its own tests in test_stages.py and test_weights.py)."""

import json
import time

from PIL import Image

from clipvdb.reports import VIEWS


def test_ingest_classify_evaluate_report_plot(cli, syn_data, tmp_path):
    w = ["--model", "tiny"]
    out = json.loads(cli("ingest", "--stage", "all", "--data", syn_data, "--limit", "20", "--json", *w).stdout)
    assert out["inserted"] == {"first": 20, "second": 20, "third": 20, "origin": 20}
    assert set(out["index"]) == {"first", "second", "third", "origin"}

    query = syn_data / "test" / "blue-triangle" / "0000.png"
    start = time.perf_counter()
    preds = json.loads(cli("classify", query, "--stage", "all", "--k", "3", "--json", *w).stdout)
    wall_ms = (time.perf_counter() - start) * 1000
    assert [p["stage"] for p in preds] == ["first", "second", "third", "origin"]
    encode_ms = {p["stage"]: p["encode_ms"] for p in preds}
    assert encode_ms["first"] == 0.0  # the pixels are the vector: no encoder pass
    # one encoder pass, timed from its start up to each stage: it grows stage by stage
    assert 0 < encode_ms["second"] <= encode_ms["third"] <= encode_ms["origin"] < wall_ms, (encode_ms, wall_ms)
    # the pass and the four queries are disjoint parts of the call
    assert encode_ms["origin"] + sum(p["query_ms"] for p in preds) < wall_ms, (preds, wall_ms)
    for p in preds:
        assert 0 < p["query_ms"] < wall_ms, (p["stage"], p["query_ms"], wall_ms)
        if p["stage"] != "origin":
            assert len(p["neighbors"]) == 3
            assert [n["distance"] for n in p["neighbors"]] == sorted(n["distance"] for n in p["neighbors"])

    table = cli("classify", query, "--stage", "first").output
    assert "first" in table and "query_ms" in table

    ev = json.loads(
        cli(
            "evaluate",
            "--stage",
            "all",
            "--data",
            syn_data,
            "--limit",
            "6",
            "--json",
            "--batch-size",
            "4",
            "--k",
            "1,3",
            *w,
        ).stdout
    )
    assert {s: v["n"] for s, v in ev["stages"].items()} == {"first": 6, "second": 6, "third": 6, "origin": 6}

    report = json.loads(cli("report", "--json").stdout)
    assert report["run_id"] == ev["run_id"]
    for view in VIEWS:
        assert report[view], f"{view} is empty"
    acc = {r["stage"]: r for r in report["report_accuracy"]}
    for stage, v in ev["stages"].items():
        assert acc[stage]["correct"] == v["correct"]
    by_k = {(r["stage"], r["k"], r["vote"]): r["correct"] for r in report["report_accuracy_by_k"]}
    assert {s for s, _, _ in by_k} == {"first", "second", "third"}  # origin is zero-shot: no neighbors
    for stage in ("first", "second", "third"):
        assert by_k[(stage, 1, "majority")] == ev["stages"][stage]["correct"]
    assert "report_confusion" in cli("report").output

    paths = cli("plot", "--out", tmp_path / "plots").output.split()
    assert len(paths) == 5
    for p in paths:
        with Image.open(p) as img:
            img.load()
            assert img.size[0] > 300


def test_classify_errors_are_one_line(cli, syn_data, tmp_path):
    missing = cli("classify", tmp_path / "nope.png", "--stage", "first", expect=2)
    assert "image not found" in missing.output and "Traceback" not in missing.output
    assert "is a directory" in cli("classify", tmp_path, "--stage", "first", expect=2).output
    assert "unknown stage 'fifth'" in cli("classify", tmp_path / "x.png", "--stage", "fifth", expect=2).output
    query = syn_data / "test" / "red-circle" / "0000.png"
    empty = cli("classify", query, "--stage", "first", expect=2)
    assert "ingest" in empty.output
    cli("ingest", "--stage", "first", "--data", syn_data, "--limit", "10", "--workers", "0")
    other = cli("classify", query, "--stage", "second", "--model", "tiny", expect=1)
    assert "clipvdb ingest --stage second" in other.output and "Traceback" not in other.output
    corrupt = tmp_path / "c.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert "c.png" in cli("classify", corrupt, "--stage", "first", expect=1).output


def _commands(group, path=()):
    import click

    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def test_every_command_has_help_with_an_example(runner):
    from clipvdb.cli import cli as group

    commands = list(_commands(group))
    assert len(commands) >= 20 and ("experiment", "search") in commands and ("serve",) in commands
    for command in [(), *commands]:
        r = runner.invoke(group, [*command, "--help"], catch_exceptions=False)
        assert r.exit_code == 0 and "Example:" in r.output and "clipvdb" in r.output, command


def test_embed_command(cli, syn_data):
    img = syn_data / "test" / "red-circle" / "0000.png"
    line = json.loads(cli("embed", img, "--stage", "first").stdout.splitlines()[0])
    assert line["dim"] == 3072 and len(line["embedding"]) == 3072
    import io

    import numpy as np

    raw = cli("embed", img, img, "--stage", "first", "--format", "npy").stdout_bytes
    assert np.load(io.BytesIO(raw)).shape == (2, 3072)
