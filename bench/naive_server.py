"""The naive baseline for `make bench-serve`: what a first FastAPI + PyTorch service looks like.

One route, ``POST /v1/predict`` with ``{"pixels": 28x28}``: pydantic validation, eager PyTorch
forward on ``model.pt``, and a synchronous SQLite insert + commit per request (default journal
mode, so every commit fsyncs) before answering. Served by uvicorn exactly like ``mnistops serve``
(one worker, uvloop/httptools when installed, no access log).

Usage: ``python bench/naive_server.py --model DIR/model.pt --db PATH.db --port 8001``
"""

from __future__ import annotations

import argparse
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field

from mnistops.service.schemas import PredictionOut  # the same response as the real service
from mnistops.training.data import MEAN, STD
from mnistops.training.model import load_model

Row = Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=28, max_length=28)]


class PixelsIn(BaseModel):
    """One 28x28 grid of ints 0-255."""

    pixels: Annotated[list[Row], Field(min_length=28, max_length=28)]


def build_app(model_path: Path, db_path: Path) -> FastAPI:
    """The naive app: model and one SQLite connection loaded at start-up."""
    app = FastAPI(title="naive baseline")
    model = load_model(model_path)
    model.eval()
    db = sqlite3.connect(str(db_path), check_same_thread=False)
    db.execute(
        "CREATE TABLE IF NOT EXISTS predictions (id TEXT PRIMARY KEY, ts REAL, image BLOB, "
        "probs TEXT, label INTEGER, confidence REAL, latency_ms REAL)"
    )
    db.commit()
    lock = threading.Lock()  # one sqlite3 connection shared by the threadpool

    @app.post("/v1/predict", response_model=PredictionOut)
    def predict(body: PixelsIn) -> Any:
        t0 = time.perf_counter()
        x = torch.tensor(body.pixels, dtype=torch.float32).view(1, 1, 28, 28) / 255.0
        with torch.no_grad():
            probs = torch.softmax(model((x - MEAN) / STD), dim=1)[0]
        label = int(probs.argmax())
        conf = float(probs[label])
        latency_ms = (time.perf_counter() - t0) * 1000
        pid = str(uuid.uuid4())
        image = bytes(v for row in body.pixels for v in row)
        with lock:
            db.execute(
                "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (pid, time.time(), image, str(probs.tolist()), label, conf, latency_ms),
            )
            db.commit()
        return PredictionOut(
            prediction_id=pid,
            label=label,
            probabilities=probs.tolist(),
            confidence=conf,
            model_version="naive",
            latency_ms=latency_ms,
        )

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    """Parse arguments and serve."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args()
    app = build_app(args.model, args.db)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
