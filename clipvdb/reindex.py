"""`clipvdb index`: rebuild stored stages' ANN indexes on a session (what an index is, and how one
is built: indexes.py)."""

from __future__ import annotations

from . import catalog, indexes
from .errors import UsageError
from .indexes import IndexInfo
from .options import IndexOptions
from .session import Session
from .stages import Stage


def reindex(session: Session, stages: list[Stage], options: IndexOptions) -> list[IndexInfo]:
    """(Re)build the ANN index of each embedding space stored at the stages, over each dataset's rows
    (`clipvdb index`; each model's vectors at a stage are a space of their own, and each dataset's
    rows of a space have an index of their own; `options.dataset`: that dataset's alone;
    `options.model`: that model's spaces alone, by the name `clipvdb models` lists): without a
    kind or a parameter, what the stage's size rule chooses, recorded as the default so that a later
    load chooses again for its size; else the kind given (or the recorded default's) with the
    parameters given in place of the rule's."""
    options.check()
    given = options.given()
    out = []
    try:
        with session.connection() as conn:
            only = catalog.dataset_id(conn, options.dataset) if options.dataset else None
            stored = catalog.stored_space_datasets(conn, stages)
            chosen = [
                (s, dataset)
                for s, dataset in stored
                if (only is None or dataset == only) and (options.model is None or s.model == options.model)
            ]
            if options.model is not None and not chosen:
                models = sorted({s.model for s, _ in stored})
                raise UsageError(
                    f"no vectors of model {options.model!r} stored at stage {', '.join(s.name for s in stages)}"
                    f" (stored: {', '.join(models) or 'none'}); 'clipvdb models' lists the models stored"
                )
            for s, dataset in chosen:
                if options.kind is None and options.metric == "l2" and not given:
                    out.append(indexes.build_default(conn, s, dataset))
                    continue
                kind, defaults = (options.kind, {}) if options.kind else indexes.stored_default(conn, s, dataset)
                params = {**defaults, **given}
                params["project"] = params.get("project") or None
                out.append(indexes.build(conn, s, dataset, kind, {**params, "metric": options.metric}))
    finally:
        session.forget()
    return out
