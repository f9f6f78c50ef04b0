"""The demo offline: synthetic data and the shipped CNN in place of CLIP, announced loudly, never
presented as CLIP."""

from pathlib import Path

from PIL import Image


def test_demo_falls_back_and_says_so(cli, monkeypatch, tmp_path):
    import clipvdb.sources as sources

    monkeypatch.setenv("CLIPVDB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sources, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    r = cli("demo", "--train", "20", "--test", "10", "--stage", "all", "--out", tmp_path / "out")
    out = r.output
    assert "NO REAL DATA" in out and "SYNTHETIC" in out
    assert "NO CLIP WEIGHTS" in out and "clipvdb's own CNN" in out and "NOT from CLIP" in out
    assert "report_accuracy" in out
    assert "stage origin skipped" in out  # the CNN's classifier knows CIFAR-10's classes, not the shapes
    pngs = sorted(Path(tmp_path / "out").glob("*.png"))
    assert len(pngs) == 4  # accuracy and time, and a distance histogram per kNN stage (first, second, third)
    for p in pngs:
        Image.open(p).verify()
