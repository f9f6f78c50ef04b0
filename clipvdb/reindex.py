"""`clipvdb index`: rebuild stored stages' ANN indexes on a session (what an index is, and how one
is built: indexes.py)."""

from __future__ import annotations

from . import catalog, indexes
from .indexes import IndexInfo
from .options import IndexOptions
from .session import Session
from .stages import Stage


def reindex(session: Session, stages: list[Stage], options: IndexOptions) -> list[IndexInfo]:
    """(Re)build the ANN index of each embedding space stored at the stages (`clipvdb index`; each
    model's vectors at a stage are a space of their own): without a kind or a parameter, what the
    stage's size rule chooses, recorded as the default so that a later load chooses again for its
    size; else the kind given (or the recorded default's) with the parameters given in place of the
    rule's."""
    options.check()
    given = options.given()
    out = []
    try:
        with session.connection() as conn:
            for s in catalog.stored_spaces(conn, stages):
                if options.kind is None and options.metric == "l2" and not given:
                    out.append(indexes.build_default(conn, s))
                    continue
                kind, defaults = (options.kind, {}) if options.kind else indexes.stored_default(conn, s)
                params = {**defaults, **given}
                params["project"] = params.get("project") or None
                out.append(indexes.build(conn, s, kind, {**params, "metric": options.metric}))
    finally:
        session.forget()
    return out
