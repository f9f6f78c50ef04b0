"""clipvdb: classify images by nearest-neighbour search over per-stage CLIP embeddings in PostgreSQL."""

__version__ = "0.1.0"
