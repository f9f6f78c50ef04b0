"""Evaluate: --metric, --against, --prompts and --dataset reach the run and its report row; two
datasets in one database stay apart."""

import json

import numpy as np
from PIL import Image


def test_evaluate_metric_prompts_against_and_two_datasets(cli, db_url, syn_data, tmp_path):
    w = ["--model", "tiny", "--workers", "0"]
    cli("ingest", "--stage", "first,origin", "--data", syn_data, *w)
    cli("ingest", "--stage", "first", "--data", syn_data, "--split", "test", *w)
    # a second dataset in the same database: its own classes, chosen by --dataset
    other = tmp_path / "other"
    for split in ("train", "test"):
        for i, colour in enumerate([(250, 0, 0), (0, 0, 250)]):
            folder = other / split / ("reds" if i == 0 else "blues")
            folder.mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(folder / "a.png")
    cli("ingest", "--stage", "first", "--data", other, "--dataset", "colours", *w)
    ambiguous = cli("classify", syn_data / "test" / "red-circle" / "0000.png", "--stage", "first", expect=2)
    assert "several datasets" in ambiguous.output
    runs = {}
    for args in (["--metric", "cosine"], ["--metric", "l2", "--against", "test"], ["--prompts", "photo"]):
        stage = "origin" if "--prompts" in args else "first"
        out = json.loads(
            cli("evaluate", "--stage", stage, "--data", syn_data, "--dataset", "syn", "--json", *args, *w).stdout
        )
        runs[tuple(args)] = out
    rows = {}
    for out in runs.values():
        rep = json.loads(cli("report", "--run", out["run_id"], "--view", "report_runs", "--json").stdout)
        rows[out["run_id"]] = rep["report_runs"][0]
    cos = rows[runs[("--metric", "cosine")]["run_id"]]
    assert cos["metric"] == "cosine" and cos["params"]["against"] == "train"
    same = runs[("--metric", "l2", "--against", "test")]
    assert rows[same["run_id"]]["params"]["against"] == "test"
    assert same["stages"]["first"]["accuracy_pct"] == 100.0  # each test image finds itself
    assert rows[runs[("--prompts", "photo")]["run_id"]]["prompts"] == "photo"
    colours = json.loads(
        cli("classify", other / "test" / "reds" / "a.png", "--stage", "first", "--dataset", "colours", "--json").stdout
    )
    assert colours[0]["predicted_class"] == "reds"


def test_accuracy_by_k_and_vote_from_one_search_equals_separate_runs(store, syn_data):
    """One evaluate with --k 1,3,7 stores each query's 7 nearest neighbors once; the view's
    accuracy at each k and vote equals a separate run at that k with that vote."""
    from clipvdb import SearchSettings

    store.ingest(syn_data, "first,second", workers=0)
    both = "first,second"
    one = store.evaluate(syn_data, both, SearchSettings(k=1, ks=(1, 3, 7), exact=True, metric="cosine"), workers=0)
    by_k = {(r["stage"], r["k"], r["vote"]): r for r in store.report("report_accuracy_by_k", run=one.run_id)}
    assert {k for _, k, _ in by_k} == {1, 3, 7} and {v for _, _, v in by_k} == {"majority", "weighted", "dino"}
    assert len(by_k) == 2 * 3 * 3
    with store.connection() as conn:
        stored = conn.execute(
            "SELECT count(*), count(DISTINCT (stage, image_id)), max(rank) FROM run_neighbors WHERE run_id = %s",
            (one.run_id,),
        ).fetchone()
    assert stored == (2 * one.images * 7, 2 * one.images, 7)  # every query's 7 neighbors, once
    for k in (1, 3, 7):
        for how in ("majority", "weighted", "dino"):
            alone = store.evaluate(
                syn_data, both, SearchSettings(k=k, vote=how, exact=True, metric="cosine"), workers=0
            )
            for stage, totals in alone.stages.items():
                row = by_k[(stage, k, how)]
                assert (row["n"], row["correct"]) == (totals.n, totals.correct), (stage, k, how)
    # with k = 1 every vote is the nearest neighbor's label
    for stage in ("first", "second"):
        assert len({by_k[(stage, 1, how)]["correct"] for how in ("majority", "weighted", "dino")}) == 1
