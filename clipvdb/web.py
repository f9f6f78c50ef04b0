"""`clipvdb serve`: a small server-rendered page to classify an image, browse its neighbours, and
search stored images by text. Bound to 127.0.0.1 by default; uploads are size-capped and decoded
with the same checks as ingest input. Every request goes through one Store (one connection pool);
an upload is decoded once, in memory."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import psycopg
from flask import Flask, Response, abort, render_template, request

from .errors import ClipvdbError, ImageError
from .images import load_image
from .knn import SearchSettings
from .stages import parse_stages
from .store import Store

MAX_UPLOAD_BYTES = 10 * 1024 * 1024


def create_app(store: Store, k: int = 5, learned: bool = False) -> Flask:
    """The app: `k` neighbours per stage for each classified image."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES

    settings = SearchSettings(k=k, learned=learned)
    stored_stages, samples = store.stored_stage_names, store.samples

    @app.errorhandler(ClipvdbError)
    def clipvdb_error(exc: ClipvdbError):
        return render_template("page.html", error=str(exc), stages=stored_stages(), samples=[]), 400

    @app.errorhandler(psycopg.OperationalError)
    def database_lost(exc: psycopg.OperationalError):
        # the request's connection died (its backend terminated, the server restarted): one line on
        # the page and in the log, no traceback; the pool replaces the connection for the next request
        text = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        msg = f"lost the database connection ({text}); try again"
        app.logger.error("clipvdb: %s %s: %s", request.method, request.path, msg)
        return render_template("page.html", error=msg, stages=[], samples=[]), 503

    @app.errorhandler(413)
    def too_large(_exc):
        msg = f"upload is larger than {MAX_UPLOAD_BYTES // 2**20} MiB; send a smaller image"
        return render_template("page.html", error=msg, stages=stored_stages(), samples=[]), 413

    @app.get("/")
    def index():
        return render_template("page.html", stages=stored_stages(), samples=samples(), k=k)

    @app.route("/classify", methods=["GET", "POST"])
    def classify():
        stages = parse_stages(request.values.getlist("stage") or stored_stages())
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
            data = store.image_png(image_id)
            name = f"stored image {image_id}"
        img = load_image(data, name)  # validated like ingest input
        preds = store.classify([img], stages, settings)
        for p in preds:
            p.image = name
        buf = io.BytesIO()
        img.resize((96, 96)).save(buf, "PNG")
        preview = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        return render_template(
            "page.html",
            stages=stored_stages(),
            samples=samples(),
            predictions=preds,
            query_name=name,
            preview=preview,
            k=k,
        )

    @app.get("/search")
    def text_search():
        q = (request.args.get("q") or "").strip()
        if not q:
            raise ImageError("type something to search for")
        n = request.args.get("k", 10, type=int)
        if n is None or not 1 <= n <= 100:
            raise ImageError("k must be a number from 1 to 100")
        hits = store.retrieve(q, k=n)
        return render_template("page.html", stages=stored_stages(), samples=samples(), hits=hits, query=q, k=k)

    @app.get("/image/<int:image_id>.png")
    def image(image_id: int):
        return Response(store.image_png(image_id, scale=3), mimetype="image/png")

    @app.get("/health")
    def health():
        store.stored_stage_names()
        return {"ok": True}

    return app


def serve(store: Store, host: str = "127.0.0.1", port: int = 8000, k: int = 5, learned: bool = False) -> None:
    from werkzeug.serving import run_simple

    run_simple(host, port, create_app(store, k, learned), threaded=True)
