"""`clipvdb learn`: fit a learned metric on a session's stored training rows and store it (what a
learned map is, and how it is fitted and applied: learned.py)."""

from __future__ import annotations

from . import learned
from .learned import LearnedMap
from .options import LearnOptions
from .session import Session
from .stages import Stage


def learn(session: Session, stage: Stage, options: LearnOptions) -> LearnedMap:
    """Fit a learned metric on the stage's training split (never the test split), store it, and write
    every stored vector's image under it (`clipvdb learn`); searches with `learned=True` then use it."""
    options.check()
    ds = session.dataset(options.dataset)
    try:
        with session.connection() as conn:
            space = session.require_space(conn, stage)
            X, y = learned.training_data(conn, stage, space.id, ds.id)
            conn.rollback()
            lmap = learned.fit(X, y, stage, options.method, options.dims, seconds=options.seconds, seed=options.seed)
            lmap.params["dataset"] = ds.name
            learned.save(conn, space, lmap)
    finally:
        session.forget()
    return lmap
