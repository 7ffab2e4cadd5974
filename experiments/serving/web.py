"""A small Flask web page and JSON API around a :class:`experiments.serving.predictor.Predictor`.

Uploads are decoded in memory (never written to disk), size-limited (``MAX_CONTENT_LENGTH``) and
pixel-limited (decompression bombs); the user's file name is only ever displayed, escaped.
"""

from __future__ import annotations

import base64
import errno
import io
import logging
import socket
import threading
from typing import IO, Any

import numpy as np
from flask import Flask, Request, jsonify, render_template, request
from PIL import Image, ImageDraw
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.serving import make_server as werkzeug_server

from core.errors import ConfigError, DataError
from experiments.serving.predictor import ModelCard, Predictor
from experiments.serving.results import top_classes
from pipelines.images import DEFAULT_MAX_PIXELS, EmptyImageError, ImageTooLargeError, NotAnImageError, decode_image

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES: int = 10_000_000
THUMBNAIL_PX: int = 256
MAX_NAME_CHARS: int = 120
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src 'self' data:; style-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class InMemoryRequest(Request):
    """A request whose uploaded files stay in memory (bounded by ``MAX_CONTENT_LENGTH``).

    Werkzeug's default spools file parts over 500 kB to a temporary file on disk.
    """

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


def create_app(
    predictor: Predictor,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    calibrated: bool = True,
) -> Flask:
    """Build the Flask app: ``/`` (upload page), ``/api/predict``, ``/api/health``, ``/api/model``.

    ``calibrated``: probabilities temperature-scaled with the model's temperature (as ``galaxy10 predict`` and
    ``galaxy10 catalog`` print them); False shows the model's own softmax.
    """
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config.update(MAX_CONTENT_LENGTH=int(max_upload_bytes), MAX_FORM_PARTS=16)
    lock = threading.Lock()  # one prediction at a time: Keras models are not re-entrant on CPU
    card = predictor.card

    def analyse() -> dict[str, Any]:
        """Read the ``file`` part of the current request, predict, return the result dict."""
        upload = request.files.get("file")
        if upload is None:
            raise EmptyImageError("no file uploaded (form field 'file'); choose a PNG or JPEG image")
        name = _display_name(upload.filename)
        data = upload.read()
        image = decode_image(data, name, max_pixels=max_pixels)
        with lock:
            probs = predictor.predict(image[None])[0]
            crop = predictor.model_view(image)
        if calibrated:
            probs = predictor.calibrate(probs[None])[0]
        top = top_classes(probs, card.class_names, len(card.class_names))
        return {
            "file": name,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "top_class": top[0][0],
            "top_probability": top[0][1],
            "classes": [{"class": c, "probability": p} for c, p in top],
            "probabilities": {c: float(p) for c, p in zip(card.class_names, probs)},
            "model": {"name": card.display_name, "run_id": card.run_id, "synthetic": card.synthetic},
            "calibrated": calibrated,
            "temperature": card.temperature if calibrated else 1.0,
            "_image": image,
            "_crop": crop,
        }

    @app.after_request
    def security_headers(resp):  # noqa: ANN001, ANN202 - Flask hook
        resp.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        return resp

    @app.get("/")
    def index():  # noqa: ANN202
        return page()

    @app.post("/")
    def index_post():  # noqa: ANN202
        try:
            result = analyse()
        except DataError as err:
            return page(error=str(err)), _status_for(err)
        return page(result=_view_model(result, card))

    @app.post("/api/predict")
    def api_predict():  # noqa: ANN202
        try:
            result = analyse()
        except DataError as err:
            return jsonify(error=str(err)), _status_for(err)
        return jsonify({k: v for k, v in result.items() if not k.startswith("_")})

    @app.get("/api/health")
    def api_health():  # noqa: ANN202
        return jsonify(status="ok", model=card.display_name)

    @app.get("/api/model")
    def api_model():  # noqa: ANN202
        return jsonify(card.to_dict())

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(err: RequestEntityTooLarge):  # noqa: ANN202
        msg = f"upload is larger than the {max_upload_bytes / 1e6:.1f} MB limit; give a smaller image"
        if request.path.startswith("/api/"):
            return jsonify(error=msg), 413
        return page(error=msg), 413

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):  # noqa: ANN202
        if request.path.startswith("/api/"):
            return jsonify(error=err.description), err.code
        return err

    def page(result: dict[str, Any] | None = None, error: str | None = None) -> str:
        return render_template(
            "index.html",
            card=card,
            result=result,
            error=error,
            calibrated=calibrated,
            max_upload_mb=max_upload_bytes / 1e6,
        )

    return app


def _status_for(err: DataError) -> int:
    """HTTP status for a rejected upload."""
    if isinstance(err, NotAnImageError):
        return 415
    if isinstance(err, ImageTooLargeError):
        return 413
    return 400


def _display_name(filename: str | None) -> str:
    """The uploaded file's name for display only (shortened; Jinja escapes it)."""
    name = (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1] or "upload"
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 1] + "…"


def _png_data_uri(image: np.ndarray, max_px: int | None = None, box_fraction: float | None = None) -> str:
    """Encode uint8 RGB as a ``data:image/png`` URI, optionally shrunk to ``max_px``.

    ``box_fraction`` outlines the centred square of that fraction of the shorter side (the region
    the model's centre crop covers).
    """

    img = Image.fromarray(image)
    if max_px is not None and max(img.size) > max_px:
        img.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    if box_fraction is not None and box_fraction < 1:
        w, h = img.size
        side = min(w, h) * box_fraction
        left, top = (w - side) / 2, (h - side) / 2
        ImageDraw.Draw(img).rectangle(
            [left, top, left + side - 1, top + side - 1], outline=(255, 214, 64), width=max(1, round(min(w, h) / 128))
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _view_model(result: dict[str, Any], card: ModelCard) -> dict[str, Any]:
    """Template data: image URIs (crop region outlined on the thumbnail) and bar geometry."""
    bars = [
        {
            "label": c["class"],
            "p": c["probability"],
            "pct": f"{100 * c['probability']:.1f}%",
            "width": round(max(0.0, min(1.0, c["probability"])) * 100, 2),
        }
        for c in result["classes"]
    ]
    return {
        **{k: v for k, v in result.items() if not k.startswith("_")},
        "thumb_uri": _png_data_uri(result["_image"], THUMBNAIL_PX, box_fraction=card.crop / card.size),
        "crop_uri": _png_data_uri(result["_crop"]),
        "crop_px": int(result["_crop"].shape[0]),
        "bars": bars,
        "top_pct": f"{100 * result['top_probability']:.1f}%",
    }


def _bind_error(host: str, port: int, err: OSError) -> ConfigError:
    if isinstance(err, socket.gaierror):
        return ConfigError(
            f"--host {host} is not an address of this machine ({err.strerror or err}); use e.g. "
            "--host 127.0.0.1, or 0.0.0.0 for every interface"
        )
    if err.errno == errno.EADDRINUSE:
        return ConfigError(
            f"port {port} on {host} is in use by another program; pass another --port, e.g. "
            f"--port {port + 1 if port < 65535 else 8000}"
        )
    if err.errno == errno.EACCES:
        return ConfigError(f"not allowed to listen on port {port} (ports below 1024 need root); pass e.g. --port 8000")
    return ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}); pass another --host or --port")


def check_bind(host: str, port: int) -> None:
    """Raise one ``ConfigError`` line if ``host:port`` cannot be listened on (bad host, port in use)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug's server does
            probe.bind(address)
    except OSError as err:
        raise _bind_error(host, port, err) from None


def make_server(
    predictor: Predictor,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    calibrated: bool = True,
) -> Any:
    """Bind werkzeug's threaded server to ``host:port`` (call ``serve_forever()`` on it).

    Raises
    ------
    ConfigError
        One line if the address cannot be listened on.
    """

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: the page is reachable from other machines", host)
    try:
        return werkzeug_server(
            host, port, create_app(predictor, max_upload_bytes=max_upload_bytes, calibrated=calibrated), threaded=True
        )
    except OSError as err:
        raise _bind_error(host, port, err) from None
    except SystemExit:  # werkzeug exits on a port in use after printing its own text
        raise ConfigError(f"port {port} on {host} is in use by another program; pass another --port") from None
