"""`clipvdb serve`: a small server-rendered page to classify an image, browse its neighbours, and
search stored images by text. Bound to 127.0.0.1 by default; uploads are size-capped and decoded
with the same checks as ingest input."""

from __future__ import annotations

import base64
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

from flask import Flask, Response, abort, render_template, request

from . import catalog, db
from .classify import SearchSettings, classify_files
from .errors import ClipvdbError, ImageError
from .images import load_image
from .retrieval import search, stored_image_png
from .stages import STAGES, parse_stages

MAX_UPLOAD_BYTES = 10 * 1024 * 1024


def stored_stages(url: str) -> list[str]:
    with db.open_db(url) as conn:
        return catalog.stages_with_rows(conn)


def create_app(url: str, load_model: Callable, k: int = 5) -> Flask:
    """The app. `load_model(stages)` returns the CLIP model (or None when only `first` is asked)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    models: dict = {}

    def model_for(stages):
        if not any(s.uses_clip for s in stages):
            return None
        if "lm" not in models:
            models["lm"] = load_model(stages)
        return models["lm"]

    def samples() -> list[dict]:
        with db.open_db(url) as conn:
            rows = conn.execute(
                """SELECT i.id, c.name FROM images i JOIN classes c ON c.dataset_id = i.dataset_id AND c.label = i.label
                   WHERE i.split <> 'train' ORDER BY i.id LIMIT 8"""
            ).fetchall()
        return [{"id": r[0], "class": r[1]} for r in rows]

    @app.errorhandler(ClipvdbError)
    def clipvdb_error(exc: ClipvdbError):
        return render_template("page.html", error=str(exc), stages=stored_stages(url), samples=[]), 400

    @app.errorhandler(413)
    def too_large(_exc):
        msg = f"upload is larger than {MAX_UPLOAD_BYTES // 2**20} MiB; send a smaller image"
        return render_template("page.html", error=msg, stages=stored_stages(url), samples=[]), 413

    @app.get("/")
    def index():
        return render_template("page.html", stages=stored_stages(url), samples=samples())

    @app.route("/classify", methods=["GET", "POST"])
    def classify():
        chosen = request.values.getlist("stage") or stored_stages(url)
        stages = parse_stages(chosen)
        with tempfile.TemporaryDirectory() as tmp:
            if request.method == "POST":
                upload = request.files.get("image")
                if upload is None or not upload.filename:
                    raise ImageError("choose an image file to upload")
                data = upload.read()
                name = Path(upload.filename).name or "upload"
            else:
                image_id = request.args.get("image_id", type=int)
                if image_id is None:
                    abort(400)
                data = stored_image_png(url, image_id)
                name = f"stored image {image_id}"
            img = load_image(data, name)  # validated like ingest input
            path = Path(tmp) / "query.png"
            img.save(path)
            preds = classify_files(url, [str(path)], stages, model_for(stages), SearchSettings(k=k))
        buf = io.BytesIO()
        img.resize((96, 96)).save(buf, "PNG")
        preview = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        return render_template("page.html", stages=stored_stages(url), samples=samples(), predictions=preds,
                               query_name=name, preview=preview)  # fmt: skip

    @app.get("/search")
    def text_search():
        q = (request.args.get("q") or "").strip()
        if not q:
            raise ImageError("type something to search for")
        hits = search(url, model_for([STAGES["origin"]]), q, k=int(request.args.get("k", 10)))
        return render_template("page.html", stages=stored_stages(url), samples=samples(), hits=hits, query=q)

    @app.get("/image/<int:image_id>.png")
    def image(image_id: int):
        return Response(stored_image_png(url, image_id, scale=3), mimetype="image/png")

    @app.get("/health")
    def health():
        with db.open_db(url) as conn:
            catalog.stored_spaces(conn, STAGES["first"])
        return {"ok": True}

    return app


def serve(url: str, load_model: Callable, host: str = "127.0.0.1", port: int = 8000) -> None:
    from werkzeug.serving import run_simple

    run_simple(host, port, create_app(url, load_model), threaded=True)
