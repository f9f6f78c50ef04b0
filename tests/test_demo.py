"""The demo offline: synthetic data and random weights, announced loudly, never presented as CLIP."""

from pathlib import Path

from PIL import Image


def test_demo_falls_back_and_says_so(cli, monkeypatch, tmp_path):
    import clipvdb.sources as sources

    monkeypatch.setenv("CLIPVDB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sources, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    r = cli("demo", "--train", "20", "--test", "10", "--stage", "first,second", "--out", tmp_path / "out")
    out = r.output
    assert "NO REAL DATA" in out and "SYNTHETIC" in out
    assert "NO CLIP WEIGHTS" in out and "RANDOM weights" in out
    assert "report_accuracy" in out
    pngs = sorted(Path(tmp_path / "out").glob("*.png"))
    assert len(pngs) == 3
    for p in pngs:
        Image.open(p).verify()
