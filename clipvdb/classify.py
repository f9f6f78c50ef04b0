"""`clipvdb classify`: new images' labels at each stage, by their nearest stored neighbors (stage
origin: CLIP's zero-shot prompts), on a session. One prediction path with evaluate: predict.py."""

from __future__ import annotations

from .errors import ImageError
from .images import ImageInput
from .knn import SearchSettings
from .options import ClassifyOptions
from .pipeline import encode_items, query_items
from .predict import Prediction, as_predictions, predict_batch, predictors
from .session import Session
from .stages import Stage


def classify(
    session: Session, images: list[ImageInput], stages: list[Stage], settings: SearchSettings, options: ClassifyOptions
) -> list[Prediction]:
    """Predictions for each image at each stage, batch by batch, against `options.against` of a
    stored dataset. Images are file paths, PIL images, HxWx3 uint8 arrays or encoded bytes."""
    settings.check()
    options.check()
    items = query_items(images)
    ds = session.dataset(options.dataset)
    encoder = session.encoder_for(stages)
    searchers, text = predictors(session, stages, settings, (ds.id, options.against), ds.classes, options.prompts)
    out: list[Prediction] = []
    with session.connection() as conn:
        for batch in encode_items(items, stages, encoder, batch_size=options.batch_size, workers=0, hash_items=False):
            if batch.failed:
                raise ImageError(batch.failed[0][1])
            keys = [it.key for it in batch.items]
            for s in stages:
                b = predict_batch(conn, s, batch.vectors[s.name], searchers.get(s.name), text)
                out += as_predictions(keys, b, ds.classes, batch.elapsed_ms.get(s.name, 0.0) / len(keys))
    return out
