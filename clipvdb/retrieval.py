"""Retrieval: text-to-image search, composed image+text queries, and neighbor grids to look at.

CLIP's final image embedding (stage origin) lives in the same space as its text embedding, so
the stored origin vectors answer text queries directly (cosine distance).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image, ImageDraw

from . import catalog
from .encoder import Encoder
from .errors import UsageError
from .images import ImageInput, as_image
from .knn import Neighbor, SearchSettings
from .pipeline import embed
from .session import Session
from .stages import STAGES, Stage
from .zeroshot import normalise


@dataclass
class Hit:
    image_id: int
    label: int
    class_name: str
    source: str
    distance: float

    def as_dict(self) -> dict:
        return asdict(self)


def text_vector(encoder: Encoder, text: str) -> np.ndarray:
    return normalise(encoder.encode_text([text])[0])


def query_vector(encoder: Encoder, text: str | None, image: ImageInput | None) -> np.ndarray:
    """The text embedding, the image's origin embedding, or (both given) the sum of the two
    normalised vectors: the simple combiner baseline of conditioned image retrieval."""
    if not text and not image:
        raise UsageError("give a text query, --image IMG, or both")
    parts = []
    if image is not None:
        parts.append(normalise(embed([image], [STAGES["origin"]], encoder)["origin"][0]))
    if text:
        parts.append(text_vector(encoder, text))
    return np.sum(parts, axis=0).astype(np.float32)


def hits(neighbors: list[Neighbor], classes: list[str]) -> list[Hit]:
    return [Hit(n.image_id, n.label, classes[n.label], n.source, n.distance) for n in neighbors]


def retrieve(
    session: Session, query: tuple[str | None, ImageInput | None], settings: SearchSettings, where: tuple
) -> list[Hit]:
    """`clipvdb retrieve`: the stored images of `where` (dataset, split) nearest to a text and/or
    image `query` by cosine distance at stage origin (settings' k and exact apply)."""
    vector = query_vector(session.encoder, *query)
    dataset, split = where
    ds = session.dataset(dataset)
    cosine = dataclasses.replace(settings, metric="cosine")
    searcher = session.searcher(session.one("origin", "retrieve"), ds.id, split, cosine)
    with session.connection() as conn:
        found, _ = searcher.search(conn, vector[None, :])
    return hits(found[0], ds.classes)


def neighbors(
    session: Session, image: ImageInput, stages: list[Stage], settings: SearchSettings, where: tuple, out: Path | str
) -> Grid:
    """`clipvdb neighbors`: one PNG at `out`, a row per stage, the query image then its k nearest
    stored images of `where` (dataset, split), captioned."""
    vectors = embed([image], stages, session.encoder_for(stages))
    dataset, split = where
    ds = session.dataset(dataset)
    with session.connection() as conn:
        found = {
            s.name: session.searcher(s, ds.id, split, settings).search(conn, vectors[s.name][:1])[0][0] for s in stages
        }
        return neighbor_grid(conn, as_image(image), found, ds.classes, Path(out))


# ------------------------------------------------------------------ neighbor grid

TILE = 96
CAPTION = 30


@dataclass
class Grid:
    path: Path
    stages: list[str]
    columns: int
    tile: int
    rows: dict[str, list[dict]]


def neighbor_grid(
    conn: psycopg.Connection,
    query: Image.Image,
    neighbors: dict[str, list[Neighbor]],
    classes: list[str],
    out: Path,
) -> Grid:
    """One PNG: a row per stage, the query image then its nearest stored images, each tile captioned
    with the class and distance."""
    images = {n.image_id: catalog.stored_image(conn, n.image_id) for found in neighbors.values() for n in found}
    columns = 1 + max((len(found) for found in neighbors.values()), default=0)
    canvas = Image.new("RGB", (columns * TILE, len(neighbors) * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, found) in enumerate(neighbors.items()):
        y = r * (TILE + CAPTION)
        tiles: list[tuple[str, float | None, Image.Image]] = [("query", None, query)]
        tiles += [(classes[n.label], n.distance, images[n.image_id]) for n in found]
        for c, (label, dist, img) in enumerate(tiles):
            x = c * TILE
            canvas.paste(img.resize((TILE - 4, TILE - 4), Image.Resampling.NEAREST), (x + 2, y + 2))
            draw.text((x + 3, y + TILE), f"{name}: query" if dist is None else f"{label[:12]}", fill="black")
            if dist is not None:
                draw.text((x + 3, y + TILE + 12), f"d={dist:.3g}", fill="#555555")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    meta = {
        name: [{"image_id": n.image_id, "class": classes[n.label], "distance": n.distance} for n in found]
        for name, found in neighbors.items()
    }
    return Grid(out, list(neighbors), columns, TILE, meta)
