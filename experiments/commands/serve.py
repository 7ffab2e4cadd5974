"""``galaxy10 serve``: a local web page (and JSON API) that classifies uploaded images."""

from __future__ import annotations

import argparse
import os

from experiments.commands.common import workspace
from experiments.commands.predict import add_model_arguments

#: Largest --max-upload-mb: an upload is held in memory while it is decoded.
MAX_UPLOAD_MB = 500


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="web page to upload an image and see its predicted class",
        description="Serve a small prediction page and JSON API (POST /api/predict, GET /api/model, "
        "GET /api/health). Binds to 127.0.0.1 unless --host says otherwise.",
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument(
        "--max-upload-mb", type=float, default=10.0, metavar="MB", help="largest accepted upload in MB (default: 10)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model once, then serve until interrupted."""
    import math

    from core.errors import ConfigError
    from experiments.serving.predictor import load_predictor
    from experiments.serving.web import check_bind, make_server

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1-65535, got {args.port}")
    if not (math.isfinite(args.max_upload_mb) and 0 < args.max_upload_mb <= MAX_UPLOAD_MB):
        raise ConfigError(
            f"--max-upload-mb {args.max_upload_mb:g} is out of range; use a size in MB above 0 and "
            f"at most {MAX_UPLOAD_MB} (uploads are held in memory; Galaxy10 images are ~0.2 MB)"
        )
    check_bind(args.host, args.port)  # a bad host or a port in use fails before the model loads
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the output clean
    predictor = load_predictor(args.model, ws=workspace(args))
    server = make_server(
        predictor,
        host=args.host,
        port=args.port,
        max_upload_bytes=int(args.max_upload_mb * 1e6),
        calibrated=not args.uncalibrated,
    )
    print(
        f"galaxy10 serve: model {predictor.card.display_name} on http://{args.host}:{args.port}/  (Ctrl-C to stop)",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
