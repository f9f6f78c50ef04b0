"""Retrieval and exploration: text-to-image search, composed image+text queries, neighbour grids.

CLIP's final image embedding (stage origin) lives in the same space as its text embedding, so
the stored origin vectors answer text queries directly (cosine distance).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from .encoders import Encoder
from .encoding import embed
from .errors import StageError, UsageError
from .images import ImageInput, array_to_image, as_image, load_image
from .search import SearchSettings
from .sources import open_source
from .stages import STAGES, Stage
from .zeroshot import normalise

if TYPE_CHECKING:
    from .store import Store


@dataclass
class Hit:
    image_id: int
    label: int
    class_name: str
    source: str
    distance: float

    def as_dict(self) -> dict:
        return asdict(self)


def text_vector(lm: Encoder, text: str) -> np.ndarray:
    return normalise(lm.encode_text([text])[0])


def query_vector(lm: Encoder, text: str | None, image: ImageInput | None) -> np.ndarray:
    """The text embedding, the image's origin embedding, or (both given) the sum of the two
    normalised vectors: the simple combiner baseline of conditioned image retrieval."""
    if not text and not image:
        raise UsageError("give a text query, --image IMG, or both")
    parts = []
    if image is not None:
        parts.append(normalise(embed([image], [STAGES["origin"]], lm)["origin"][0]))
    if text:
        parts.append(text_vector(lm, text))
    return np.sum(parts, axis=0).astype(np.float32)


def search(
    store: Store,
    text: str | None = None,
    *,
    image: ImageInput | None = None,
    k: int = 10,
    stage: str = "origin",
    dataset_name: str | None = None,
    split: str = "train",
    exact: bool = False,
) -> list[Hit]:
    """Stored images nearest to a text (and/or image) query by cosine distance at stage origin."""
    if stage != "origin":
        raise StageError("text search works at stage origin only: CLIP's text embedding lives in that space")
    q = query_vector(store.encoder, text, image)
    ds = store.dataset(dataset_name)
    searcher = store.searcher(STAGES["origin"], ds.id, split, SearchSettings(k=k, exact=exact, metric="cosine"))
    with store.connection() as conn:
        neigh, _ = searcher.search(conn, q[None, :])
    return [Hit(n.image_id, n.label, ds.classes[n.label], n.source, n.distance) for n in neigh[0]]


# ------------------------------------------------------------------ stored pixels


@lru_cache(maxsize=8)
def _source(location: str):
    return open_source(location)


@lru_cache(maxsize=8)
def _cifar_index(location: str, split: str) -> dict[str, np.ndarray]:
    return {it.key: it.array for it in _source(location).items(split)}


def stored_image(conn, image_id: int) -> Image.Image:
    """The pixels of a stored image, re-read from its source (a file, or a CIFAR-10 record)."""
    row = conn.execute(
        "SELECT d.source, i.split, i.source FROM images i JOIN datasets d ON d.id = i.dataset_id WHERE i.id = %s",
        (image_id,),
    ).fetchone()
    if row is None:
        raise UsageError(f"no stored image {image_id}")
    location, split, key = row
    root = Path(location)
    if root.is_dir() and (root / key).is_file():
        return load_image(root / key)
    if _source(location).kind == "cifar10-python":
        return array_to_image(_cifar_index(location, split)[key])
    raise UsageError(f"image {image_id} ({key}) is no longer readable at {location}")


def stored_image_png(store: Store, image_id: int, scale: int = 1) -> bytes:
    with store.connection() as conn:
        img = stored_image(conn, image_id)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------ neighbour grid

TILE = 96
CAPTION = 30


@dataclass
class Grid:
    path: Path
    stages: list[str]
    columns: int
    tile: int
    rows: dict[str, list[dict]]


def neighbour_grid(
    store: Store,
    image: ImageInput,
    stages: list[Stage],
    out: Path,
    *,
    k: int = 10,
    dataset_name: str | None = None,
    split: str = "train",
    exact: bool = False,
    learned: bool = False,
) -> Grid:
    """One PNG: a row per stage, the query image then its k nearest stored images, each tile
    captioned with the class and distance."""
    settings = SearchSettings(k=k, exact=exact, learned=learned)
    vectors = embed([image], stages, store.encoder_for(stages))
    query = as_image(image)
    ds = store.dataset(dataset_name)
    rows: dict[str, list[dict]] = {}
    with store.connection() as conn:
        for s in stages:
            neigh, _ = store.searcher(s, ds.id, split, settings).search(conn, vectors[s.name][:1])
            rows[s.name] = [{"image_id": n.image_id, "class": ds.classes[n.label], "distance": n.distance,
                             "img": stored_image(conn, n.image_id)} for n in neigh[0]]  # fmt: skip
    width = (k + 1) * TILE
    height = len(stages) * (TILE + CAPTION)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for r, s in enumerate(stages):
        y = r * (TILE + CAPTION)
        tiles = [("query", None, query)] + [(n["class"], n["distance"], n["img"]) for n in rows[s.name]]
        for c, (name, dist, img) in enumerate(tiles):
            x = c * TILE
            canvas.paste(img.resize((TILE - 4, TILE - 4), Image.Resampling.NEAREST), (x + 2, y + 2))
            caption = f"{s.name}: query" if dist is None else f"{name[:12]}"
            draw.text((x + 3, y + TILE), caption, fill="black")
            if dist is not None:
                draw.text((x + 3, y + TILE + 12), f"d={dist:.3g}", fill="#555555")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    meta = {n: [{k2: v for k2, v in d.items() if k2 != "img"} for d in lst] for n, lst in rows.items()}
    return Grid(out, [s.name for s in stages], k + 1, TILE, meta)


def grid_shape(n_stages: int, k: int) -> tuple[int, int]:
    return ((k + 1) * TILE, n_stages * (TILE + CAPTION))
