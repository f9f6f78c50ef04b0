"""Small archives in the official CIFAR-10 python format, written by the tests."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path


def write_cifar_archive(path: Path, train: dict, test: dict, classes: list[str]) -> Path:
    """Write a small archive in the official CIFAR-10 python format.

    `train` and `test` are {"data": uint8 (N, 3072), "labels": list[int]}."""
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, obj: dict) -> None:
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("batches.meta", {b"label_names": [c.encode() for c in classes]})
        add(
            "data_batch_1",
            {
                b"data": train["data"],
                b"labels": train["labels"],
                b"filenames": [f"{i}.png".encode() for i in range(len(train["labels"]))],
            },
        )
        add(
            "test_batch",
            {
                b"data": test["data"],
                b"labels": test["labels"],
                b"filenames": [f"{i}.png".encode() for i in range(len(test["labels"]))],
            },
        )
    return path
