"""Labelled image sources: the official CIFAR-10 python version, image-folder trees, a synthetic set.

An item is one labelled image: a stable key (unique within its split), a label, and either a file
path or an HxWx3 uint8 array.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tarfile
import urllib.request
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from .embedded import home_dir
from .errors import SourceError
from .images import IMAGE_EXTENSIONS

_EXTENSIONS = tuple(IMAGE_EXTENSIONS)  # str.endswith takes a tuple: one call per file name

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR_SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
LOCAL_FORMATS = (
    "a cifar-10-batches-py folder, the cifar-10-python.tar.gz archive, or an image folder SRC/<split>/<class>/*.png"
)


@dataclass(frozen=True)
class Item:
    key: str
    label: int
    path: Path | str | None = None  # a folder source gives a str: 1,000,000 Path objects take 5 s
    array: np.ndarray | None = None
    image: Any = None  # an image given in memory (PIL image, array or bytes), for classify

    def sha256(self) -> bytes:
        if self.array is not None:
            return hashlib.sha256(np.ascontiguousarray(self.array).tobytes()).digest()
        assert self.path is not None
        with open(self.path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").digest()


@dataclass
class Source:
    name: str
    location: str
    classes: list[str]
    kind: str
    root: Path | None = None
    _cifar: dict[str, list[tuple[str, dict]]] | None = None
    ignored: list[str] | None = None
    rejected: list[tuple[str, str]] | None = None

    def splits(self) -> list[str]:
        if self._cifar is not None:
            return list(CIFAR_SPLITS)
        assert self.root is not None
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def items(self, split: str) -> list[Item]:
        if self._cifar is not None:
            return self._cifar_items(split)
        return self._folder_items(split)

    def _cifar_items(self, split: str) -> list[Item]:
        if split not in CIFAR_SPLITS:
            raise SourceError(f"CIFAR-10 has splits train and test, not {split!r}")
        out = []
        assert self._cifar is not None
        for batch_name, batch in self._cifar[split]:
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = batch[b"labels"]
            for i, label in enumerate(labels):
                out.append(Item(key=f"{batch_name}/{i:05d}", label=int(label), array=data[i]))
        return out

    def _folder_items(self, split: str) -> list[Item]:
        assert self.root is not None
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise SourceError(
                f"{self.root} has no {split!r} split folder (it has: {', '.join(self.splits()) or 'none'})"
            )
        index = {c: i for i, c in enumerate(self.classes)}
        per_class: list[list[Item]] = []
        self.ignored = []
        self.rejected = []
        root = str(self.root)
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            found = []
            # os.walk and string keys: pathlib's rglob and relative_to cost 3-4 s per 50,000 files
            keys = []
            for folder, _, files in os.walk(class_dir):
                rel = os.path.relpath(folder, root)
                keys += [f"{rel}/{f}" for f in files]
            for key in sorted(keys, key=lambda k: k.split("/")):  # pathlib's order: part by part
                if not key.lower().endswith(_EXTENSIONS):
                    self.ignored.append(_shown(key))
                    continue
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    shown = _shown(key)
                    self.rejected.append((shown, f"{shown}: the file name is not valid UTF-8; rename the file"))
                    continue
                found.append(Item(key=key, label=index[class_dir.name], path=f"{root}/{key}"))
            per_class.append(found)
        # Interleave the classes so that --limit N takes a balanced, deterministic subset.
        out = [it for group in zip_longest(*per_class) for it in group if it is not None]
        return out


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(member)
    if fh is None:
        raise SourceError(f"{member.name}: not a regular file in the archive")
    return fh.read()


def _shown(name: str) -> str:
    """A file name as printable text; bytes that are not UTF-8 appear as backslash escapes."""
    return name.encode("utf-8", "backslashreplace").decode()


def _load_pickle(data: bytes) -> dict:
    try:
        return pickle.loads(data, encoding="bytes")
    except Exception as exc:
        raise SourceError(f"not a CIFAR-10 python batch: {exc}") from exc


def _cifar_from_dir(path: Path) -> Source:
    batches = {}
    for split, names in CIFAR_SPLITS.items():
        batches[split] = [(n, _load_pickle((path / n).read_bytes())) for n in names if (path / n).exists()]
    names = _cifar_names(path / "batches.meta" if (path / "batches.meta").exists() else None)
    _trim_missing(batches)
    return Source("cifar10", str(path.resolve()), names, "cifar10-python", _cifar=batches)


def _cifar_names(meta: Path | bytes | None) -> list[str]:
    if meta is None:
        return list(CIFAR10_CLASSES)
    raw = _load_pickle(meta if isinstance(meta, bytes) else meta.read_bytes())
    return [n.decode() if isinstance(n, bytes) else str(n) for n in raw[b"label_names"]]


def _trim_missing(batches: dict[str, list]) -> None:
    if not any(batches.values()):
        raise SourceError("no CIFAR-10 batches (data_batch_1..5, test_batch) found")


def _cifar_from_archive(path: Path) -> Source:
    batches: dict[str, list] = {s: [] for s in CIFAR_SPLITS}
    meta = None
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for split, names in CIFAR_SPLITS.items():
                for n in names:
                    if n in members:
                        batches[split].append((n, _load_pickle(_member(tar, members[n]))))
            if "batches.meta" in members:
                meta = _member(tar, members["batches.meta"])
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError(f"{path}: not a readable CIFAR-10 archive ({exc})") from exc
    _trim_missing(batches)
    return Source("cifar10", str(path.resolve()), _cifar_names(meta), "cifar10-python", _cifar=batches)


def _folder_source(path: Path) -> Source:
    splits = [p for p in path.iterdir() if p.is_dir()]
    classes = sorted({c.name for s in splits for c in s.iterdir() if c.is_dir()})
    if not classes:
        raise SourceError(f"{path}: no <split>/<class>/ folders found; expected {LOCAL_FORMATS}")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.resolve().name) or "images"
    return Source(name, str(path.resolve()), classes, "image-folder", root=path)


def download_cifar10(cache_dir: Path, timeout: float = 10.0) -> Path:
    """Fetch the official archive into `cache_dir` (once); SourceError when offline."""
    target = cache_dir / "cifar-10-python.tar.gz"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(CIFAR10_URL, timeout=timeout) as resp, open(tmp, "wb") as fh:
            md5 = hashlib.md5()
            while block := resp.read(1 << 20):
                md5.update(block)
                fh.write(block)
        if md5.hexdigest() != CIFAR10_MD5:
            raise SourceError("the downloaded CIFAR-10 archive has the wrong checksum; try again")
        tmp.rename(target)
    except (OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise SourceError(
            f"cannot download CIFAR-10 ({exc.__class__.__name__}); pass --data with {LOCAL_FORMATS}"
        ) from exc
    return target


def open_source(spec: str | Path, cache_dir: Path | None = None) -> Source:
    """Resolve --data: 'cifar10', a CIFAR-10 python folder or archive, or an image-folder tree."""
    if str(spec) == "cifar10":
        return _cifar_from_archive(download_cifar10(cache_dir or home_dir() / "cache"))
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"data source not found: {spec}; expected 'cifar10' or {LOCAL_FORMATS}")
    if path.is_file():
        if tarfile.is_tarfile(path):
            return _cifar_from_archive(path)
        raise SourceError(f"{spec} is a file but not a CIFAR-10 archive; expected {LOCAL_FORMATS}")
    if (path / "data_batch_1").exists() or (path / "test_batch").exists():
        return _cifar_from_dir(path)
    if (path / "cifar-10-batches-py").is_dir():
        return _cifar_from_dir(path / "cifar-10-batches-py")
    return _folder_source(path)
