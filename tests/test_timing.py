"""Evaluate's time per image is what an image costs: the run's wall time shared among the work in
progress. The encoder's figure matches the same network run bare on the same images with the whole
machine; encode + query per image, times the images, fits in the command's wall time (work that
overlaps is never counted twice); report_timing and /runs/<id> say what ran at once.

The comparison with the bare network holds when the run has the cores it was given: on a machine where
other work takes part of every core (measured before and after the run), a wall-clock figure is a
figure of that contention, so the test warns that it did not compare and checks the rest."""

import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import clipvdb
from clipvdb import synthetic
from clipvdb.images import load_image, read_file
from clipvdb.pipeline import Timeline
from clipvdb.sources import open_source
from clipvdb.stages import STAGES

CNN = Path(clipvdb.__file__).parent / "models" / "cifar10-cnn.pt"
TRAIN_PER_CLASS, TEST_PER_CLASS = 100, 100  # 1,000 stored, 1,000 evaluated
BATCH = 100
ASKED = "first,second,third"  # the CNN's origin is its CIFAR-10 classifier: not these classes
RATIO = 1.3  # recorded encoder ms per image against the bare network's, either way
WALL_MARGIN = 1.02
FREE = 0.9  # the share of each core a busy thread gets on a machine free enough to compare wall clocks


def test_timeline_splits_each_moment_among_the_work_in_progress():
    t0 = time.perf_counter() - 100
    tl = Timeline(t0)
    tl.add("a", t0 + 0, t0 + 4)  # alone for 1 s, then beside b
    tl.add("b", t0 + 1, t0 + 3, weight=3)  # three threads: 3/4 of each moment it shares with a
    started = [0.0]
    tl.queue("c", lambda: started[0])  # queued to another process, not started: nothing yet
    tl.advance()
    assert tl.final("a") and tl.final("b") and not tl.final("c")
    assert tl.take("a") == pytest.approx(1 + 2 * 0.25 + 1)
    assert tl.take("b") == pytest.approx(2 * 0.75)
    assert tl.idle_s == pytest.approx(96, abs=0.01)  # 4-100: nothing in progress
    started[0] = time.perf_counter()  # c starts; d begins beside it
    with tl.piece("d"):
        time.sleep(0.02)
        tl.advance()  # c and d each have half of every moment since both started
        time.sleep(0.02)
        c_ended = time.perf_counter()
        tl.add("c", started[0], c_ended)
        time.sleep(0.02)
    d_ended = time.perf_counter()
    tl.advance()
    c, d = tl.take("c"), tl.take("d")
    assert c == pytest.approx((c_ended - started[0]) / 2, abs=1e-3)
    assert d == pytest.approx((c_ended - started[0]) / 2 + (d_ended - c_ended), abs=1e-3)
    assert tl.idle_s + 2.5 + 1.5 + c + d == pytest.approx(tl.wall_s)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return synthetic.generate(
        tmp_path_factory.mktemp("timing") / "syn", {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}, seed=7
    )


def bare_ms_per_image(batches: list[np.ndarray]) -> float:
    """The network alone, in this process, with every thread torch has (the whole machine), stopping at
    stage third as the evaluate's pass does: wall ms per image of one pass over the batches (the median
    of three passes after a warm-up pass)."""
    from clipvdb.trained_model import TrainedEncoder

    encoder = TrainedEncoder(CNN)
    n = sum(len(b) for b in batches)
    passes = []
    for _ in range(4):
        t0 = time.perf_counter()
        for b in batches:
            encoder.encode(b, [STAGES["second"], STAGES["third"]])
        passes.append((time.perf_counter() - t0) * 1000 / n)
    return statistics.median(passes[1:])


SPIN = """
import sys, time
start, seconds = float(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
cpu0, wall0 = time.process_time(), time.perf_counter()
while time.perf_counter() - wall0 < seconds:
    pass
print((time.process_time() - cpu0) / (time.perf_counter() - wall0))
"""


def core_share(seconds: float = 0.5) -> float:
    """The share of its core's time a busy process gets while one runs on every usable core: about 1 on
    a machine nothing else uses, 0.5 when a busy loop runs on every core beside them."""
    from clipvdb.pipeline import usable_cores

    start = time.time() + 0.3
    spins = [
        subprocess.Popen([sys.executable, "-c", SPIN, str(start), str(seconds)], stdout=subprocess.PIPE, text=True)
        for _ in range(usable_cores())
    ]
    return min(float(p.communicate()[0]) for p in spins)


def test_encoder_ms_matches_the_bare_network_and_fits_the_wall_time(cli, db_url, images, capsys):
    import torch

    from clipvdb import Store
    from clipvdb.trained_model import TrainedEncoder
    from clipvdb.web import create_app

    threads = torch.get_num_threads()
    cli("ingest", "--stage", ASKED, "--data", images, "--model", CNN)
    items = open_source(str(images)).items("test")
    prepare = TrainedEncoder(CNN).prepare
    batches = [
        np.stack([prepare(load_image(read_file(it.path, it.key), it.key)) for it in items[i : i + BATCH]])
        for i in range(0, len(items), BATCH)
    ]

    def evaluate() -> tuple[dict, dict, float]:
        t0 = time.perf_counter()
        out = cli("evaluate", "--stage", ASKED, "--data", images, "--model", CNN, "--batch-size", BATCH, "--json")
        wall_s = time.perf_counter() - t0
        run = json.loads(out.stdout)
        rep = json.loads(cli("report", "--run", run["run_id"], "--view", "report_timing", "--json").stdout)
        return run, {r["stage"]: r for r in rep["report_timing"]}, wall_s

    free_before = core_share()
    before = bare_ms_per_image(batches)
    run, timing, wall_s = evaluate()
    after = bare_ms_per_image(batches)
    free = min(free_before, core_share())
    bare = statistics.median([before, after])
    encoder_threads = run["concurrency"]["encoder_threads"]
    n = len(items)
    assert {s: t["n"] for s, t in timing.items()} == {"first": n, "second": n, "third": n}

    # what ran at once, recorded and shown: the encoder's threads and the decoding workers together
    # fit the cores (beside a worker, the encoder computes with the cores it leaves); torch has its
    # own thread count back after the run
    assert torch.get_num_threads() == threads
    for t in timing.values():
        assert (t["timing"], t["connections"], t["encoder_threads"]) == ("wall share", 2, encoder_threads)
        assert t["workers"] == run["concurrency"]["workers"] >= 1 and t["cores"] >= 1
        assert 1 <= t["encoder_threads"] <= threads
        assert t["encoder_threads"] + t["workers"] <= max(t["cores"], 1 + t["workers"])

    # the encoder: third is the whole pass (the deepest stage asked); second a part of it
    recorded = timing["third"]["encode_ms_mean"]
    own = run["stages"]["third"]["batch_encode_s"] * 1000 / n
    said = (
        f"encoder ms per image: {recorded:.3f} recorded at {encoder_threads} threads, {bare:.3f} bare "
        f"({before:.3f} before, {after:.3f} after) at {threads} threads; the batches' own time {own:.3f}; "
        f"command {wall_s * 1000 / n:.3f} ms per image; "
        f"a busy process on each core got {free:.2f} of it"
    )
    with capsys.disabled():
        print(f"\n{said}")
    if free < FREE:
        warnings.warn(
            f"a busy machine: {said}; the comparison with the bare network needs {FREE} of each core", stacklevel=1
        )
    else:
        best = recorded
        if recorded / bare > RATIO:
            # a run of a second or two: one stall of the machine weighs on it; timing noise only adds
            # time, so the encoder's time is taken again and the smaller kept
            best = min(recorded, evaluate()[1]["third"]["encode_ms_mean"])
            said += f"; again: {best:.3f}"
        assert 1 / RATIO <= best / bare <= RATIO, said
    assert 0 < timing["second"]["encode_ms_mean"] < recorded
    assert timing["first"]["encode_ms_mean"] == 0

    # encode + query per image at each stage, times the images, fits in the command's wall time; so
    # does the whole: the pass counted once and every stage's query
    for stage, t in timing.items():
        cost_s = (t["encode_ms_mean"] + t["query_ms_mean"]) * n / 1000
        assert cost_s <= wall_s * WALL_MARGIN, f"{stage}: {cost_s:.2f} s of encode + query in {wall_s:.2f} s"
    whole_s = (recorded + sum(t["query_ms_mean"] for t in timing.values())) * n / 1000
    assert whole_s <= wall_s * WALL_MARGIN, f"one pass and every query: {whole_s:.2f} s in {wall_s:.2f} s"
    # and the parts add up to the run's own wall time per image
    t = timing["first"]
    parts = t["decode_ms_mean"] + recorded + sum(x["query_ms_mean"] for x in timing.values())
    parts += t["store_ms_mean"] + t["other_ms_mean"]
    assert parts == pytest.approx(t["wall_ms_per_image"], rel=0.01)
    assert t["wall_ms_per_image"] * n / 1000 <= wall_s

    # the run's page says what ran at once, and its note adds the same parts up
    with Store(db_url) as store:
        html = create_app(store).test_client().get(f"/runs/{run['run_id']}").get_data(as_text=True)
    workers = run["concurrency"]["workers"]
    assert f"2 connections, {workers} decoding workers, {encoder_threads} encoder threads on" in html
    assert f"= {t['wall_ms_per_image']:.2f} ms per image" in html
    assert f"encode (the pass to third) {recorded:.2f}" in html
