"""Classification at the `origin` stage: CLIP's zero-shot (class-name prompts through the text
tower), or a trained model's own classifier."""

from __future__ import annotations

import numpy as np

from .encoder import Encoder
from .errors import UsageError

# The study's own prompts for CIFAR-10 (grammar as in the study).
STUDY_PROMPTS = {
    "airplane": "a airplane",
    "automobile": "an automobile",
    "bird": "a bird",
    "cat": "a cat",
    "deer": "a deer",
    "dog": "a dog",
    "frog": "a frog",
    "horse": "a horse",
    "ship": "a ship",
    "truck": "a truck",
}
TEMPLATES = {"study": "a {}", "photo": "a photo of a {}."}

_cache: dict[tuple, np.ndarray] = {}


def prompts_for(classes: list[str], template: str = "study") -> list[str]:
    if template == "study":
        return [STUDY_PROMPTS.get(c, f"a {c}") for c in classes]
    if template in TEMPLATES:
        return [TEMPLATES[template].format(c) for c in classes]
    if "{}" in template:
        return [template.format(c) for c in classes]
    raise UsageError(f"unknown prompt template {template!r}; use study, photo, or a string with {{}}")


def normalise(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def text_embeddings(encoder: Encoder, classes: list[str], template: str = "study") -> np.ndarray:
    """L2-normalised rows, one per class, in origin's space; cached per (weights, classes, template).
    CLIP's are the class prompts' text vectors; an encoder with a classifier of its own gives its
    classes as unit vectors (`class_vectors`), so the nearest row is the classifier's answer."""
    key = (encoder.name, encoder.weights, tuple(classes), template)
    if key not in _cache:
        own = getattr(encoder, "class_vectors", None)
        rows = own(classes) if own is not None else encoder.encode_text(prompts_for(classes, template))
        _cache[key] = normalise(rows).astype(np.float32)
    return _cache[key]


def classify(image_vectors: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class index and cosine distance (1 - similarity) for each origin vector."""
    sims = normalise(image_vectors) @ text.T
    best = sims.argmax(axis=1)
    return best, 1.0 - sims[np.arange(len(best)), best]
