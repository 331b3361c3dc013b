"""Hot-swapping of the served model.

:class:`ModelFollower` keeps the served :class:`~mnistops.service.inference.LoadedModel` in one
attribute. A background service asks ``resolve()`` (e.g. the registry's ``champion`` alias) for
the current version; a new version is loaded and warmed up *off to the side*, then published with
a single attribute assignment. A request grabs the object once (``follower.current()``) and
finishes on it, so it never sees a half-loaded model nor mixes two versions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from mnistops.errors import ModelError
from mnistops.runtime import BackgroundService
from mnistops.service.inference import LoadedModel, load_model_dir

__all__ = ["Listener", "Loader", "ModelFollower"]

log = logging.getLogger(__name__)

Loader = Callable[[str, Path], LoadedModel]
Listener = Callable[[LoadedModel | None, LoadedModel], None]


class ModelFollower(BackgroundService):
    """Serve whatever version ``resolve()`` names, swapping atomically when it changes.

    A :class:`~mnistops.runtime.BackgroundService`: its step is one :meth:`poll_once`.
    """

    def __init__(
        self,
        resolve: Callable[[], tuple[str, Path]],
        backend: str = "onnx",
        poll_seconds: float = 2.0,
        intra_op_threads: int = 1,
        loader: Loader | None = None,
        on_change: Listener | None = None,
    ) -> None:
        """Create a follower; nothing is loaded until :meth:`start` or :meth:`force_refresh`.

        Args:
            resolve: Returns ``(version, local model folder)`` of the model to serve.
            backend: Preferred backend (``"onnx"`` or ``"torch"``).
            poll_seconds: Interval between two ``resolve()`` calls in the background thread.
            intra_op_threads: onnxruntime threads per run.
            loader: Replaces :func:`load_model_dir` (tests, shadow models).
            on_change: Called as ``on_change(old, new)`` after each swap (metrics, logging).
        """
        super().__init__("model-follower", poll_seconds)
        self._resolve = resolve
        self.backend = backend
        self._loader: Loader = loader or (
            lambda v, d: load_model_dir(v, d, backend=backend, intra_op_threads=intra_op_threads)
        )
        self._on_change = on_change
        self._current: LoadedModel | None = None  # swapped by ONE assignment; readers take no lock
        self._load_lock = threading.Lock()  # one load at a time (poller vs force_refresh)
        self.load_failures = 0
        self.resolve_failures = 0
        self.swaps = 0
        self.last_error: str | None = None
        self._failed_version: str | None = None

    @property
    def poll_seconds(self) -> float:
        """Seconds between two polls."""
        return self.interval

    def current(self) -> LoadedModel:
        """The model to use for one request (grab once, use for the whole request).

        Raises:
            ModelError: No model has been loaded yet (HTTP 503).
        """
        model = self._current
        if model is None:
            raise ModelError("no model loaded yet")
        return model

    @property
    def ready(self) -> bool:
        """True once a model is being served."""
        return self._current is not None

    def force_refresh(self, reload: bool = False) -> LoadedModel:
        """Resolve now and load the named version if it differs (or ``reload``); errors propagate.

        Returns:
            The model served afterwards.

        Raises:
            MnistopsError: From ``resolve()`` or the loader; the previous model stays served.
        """
        with self._load_lock:
            version, model_dir = self._resolve()
            self._swap_to(str(version), Path(model_dir), reload)
        return self.current()

    def poll_once(self) -> None:
        """One background poll: like :meth:`force_refresh` but errors are logged and counted."""
        with self._load_lock:
            try:
                version, model_dir = self._resolve()
            except Exception as exc:  # registry down etc.: keep serving the old model
                self.resolve_failures += 1
                self.last_error = f"resolve: {exc}"
                log.warning("cannot resolve the model to serve: %s", exc)
                return
            try:
                self._swap_to(str(version), Path(model_dir), reload=False)
            except Exception as exc:  # a broken new version must never take the service down
                self.load_failures += 1
                self.last_error = f"load {version}: {exc}"
                # loud once per bad version, quiet on the retries of the following polls
                level = logging.DEBUG if self._failed_version == str(version) else logging.ERROR
                self._failed_version = str(version)
                log.log(level, "cannot load model version %s from %s: %s", version, model_dir, exc)

    def _swap_to(self, version: str, model_dir: Path, reload: bool) -> None:
        """Load ``version`` off to the side and publish it (caller holds ``_load_lock``)."""
        old = self._current
        if not reload and old is not None and old.version == version:
            return
        new = self._loader(version, model_dir)  # fully loaded and warmed up, or raises
        self._current = new  # the atomic swap: in-flight requests keep the object they grabbed
        self.swaps += 1
        self._failed_version = None
        log.info("serving model version %s (%s) from %s", new.version, new.backend, new.model_dir)
        if self._on_change is not None:
            try:
                self._on_change(old, new)
            except Exception:  # a listener bug must not look like a failed load
                log.exception("model change listener failed")

    def step(self) -> None:
        """One poll (errors are counted in :meth:`stats`, never raised: the old model keeps serving)."""
        self.poll_once()

    def start(self) -> Self:
        """Load the current version once (errors logged), then poll every ``poll_seconds``."""
        if not self.running:
            self.poll_once()  # synchronously: the app is ready with a model, or says why not
        return super().start()

    def run(self) -> None:
        """Poll after each interval (the first poll ran in :meth:`start`)."""
        while not self.stopping.wait(self.interval):
            self.run_step()

    def stats(self) -> dict[str, Any]:
        """Counters for /health and Prometheus."""
        cur = self._current
        return {
            "version": cur.version if cur else None,
            "backend": cur.backend if cur else None,
            "loaded_at": cur.loaded_at if cur else None,
            "swaps": self.swaps,
            "load_failures": self.load_failures,
            "resolve_failures": self.resolve_failures,
            "last_error": self.last_error,
        }
