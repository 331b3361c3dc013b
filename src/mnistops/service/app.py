"""The FastAPI application factory.

``create_app(settings)`` wires the prediction store and its batching logger, the model follower
(which tracks the registry's ``champion`` alias), the shadow runner, metrics, routes and error
mapping: an API replica and nothing else (the monitor, controller and worker are their own
processes, see docs/control-plane.md). Nothing is created on import; the lifespan builds and tears
everything down (SIGTERM → uvicorn shutdown → the logger flushes every accepted prediction).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnistops import __version__
from mnistops.errors import StoreError
from mnistops.service.errors import install_error_handlers
from mnistops.service.follower import ModelFollower
from mnistops.service.inference import LoadedModel
from mnistops.service.metrics import ServiceMetrics
from mnistops.service.openapi import install_openapi
from mnistops.service.routes import admin, monitoring, ops, predict
from mnistops.service.routes.ops import static_dir
from mnistops.service.state import RegistryOps, Resolver, ServiceState
from mnistops.settings import Settings, get_settings

if TYPE_CHECKING:
    from mnistops.service.logger import PredictionLogger
    from mnistops.service.shadow import ShadowRunner

log = logging.getLogger(__name__)


class MetricsMiddleware:
    """Pure ASGI middleware: request counts and latency by route template (cheap on the hot path)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or (
                "/static" if scope["path"].startswith("/static") else "other"
            )
            self.metrics.requests.labels(route=path, method=scope["method"], status=str(status)).inc()
            self.metrics.latency.labels(route=path).observe(time.perf_counter() - t0)


def default_resolver(settings: Settings) -> tuple[Resolver, RegistryOps]:
    """Follow the registry's ``champion`` alias (one registry call per poll)."""
    from mnistops.registry.core import Registry

    reg = Registry(settings)
    return (lambda: reg.resolve_alias("champion")), reg


def _shadow_runner(
    settings: Settings, reg: RegistryOps, logger: PredictionLogger, metrics: ServiceMetrics
) -> ShadowRunner:
    from mnistops.service.shadow import ShadowRunner

    def resolve() -> tuple[str, Path] | None:
        version = reg.alias_version("challenger")
        champion = reg.alias_version("champion")
        if version is None or version == champion:
            return None
        return version, reg.download(version)

    return ShadowRunner(
        resolve,
        logger.submit_shadow,
        max_requests=settings.shadow_requests,
        poll_seconds=settings.model_poll_seconds,
        on_agreement=metrics.shadow_agreement.set,
        backend=settings.inference_backend,
    )


def _follower(settings: Settings, resolve: Resolver, metrics: ServiceMetrics) -> ModelFollower:
    def on_change(old: LoadedModel | None, new: LoadedModel) -> None:
        metrics.set_model(new.version, new.backend)
        metrics.model_swaps.inc()
        log.info("now serving model version %s (%s)", new.version, new.backend)

    return ModelFollower(
        resolve,
        backend=settings.inference_backend,
        poll_seconds=settings.model_poll_seconds,
        intra_op_threads=settings.inference_threads,
        on_change=on_change,
    )


def _start_state(
    settings: Settings, metrics: ServiceMetrics, resolver: Resolver | None, registry_ops: RegistryOps | None
) -> ServiceState:
    """Build and start the store, logger, model follower and (when configured) the shadow runner."""
    from mnistops.service.logger import PredictionLogger
    from mnistops.store.predictions import PredictionStore

    settings.ensure_dirs()
    res, reg = resolver, registry_ops
    if res is None:
        res, default_reg = default_resolver(settings)
        reg = reg or default_reg
    store = PredictionStore(settings.database)
    try:  # migrate here, in the main thread, before any thread (journal writer, MLflow) starts
        store.migrate()
    except StoreError as exc:  # the database may be down at start: the journal keeps accepting
        log.warning("store not migrated at startup (retried on first write): %s", exc)
    logger = PredictionLogger(
        store,
        settings.journal_dir,
        durability=settings.durability,
        batch_size=settings.log_batch_size,
        flush_seconds=settings.log_flush_seconds,
        segment_bytes=settings.journal_segment_bytes,
    )
    follower = _follower(settings, res, metrics)
    state = ServiceState(settings, metrics, follower, store, logger, registry_ops=reg)
    metrics.log_stats = state.logger_stats
    follower.start()
    if reg is not None and (settings.shadow_requests > 0 or settings.canary_share > 0):
        state.shadow = _shadow_runner(settings, reg, logger, metrics).start()
    return state


def _stop_state(state: ServiceState) -> None:
    """Stop everything in reverse order; the logger flushes last (nothing accepted is lost)."""
    for bg in reversed(state.background):
        try:
            bg.stop()
        except Exception:  # keep shutting down the rest
            log.exception("stopping %r failed", bg)
    state.follower.stop()
    if state.shadow is not None:
        state.shadow.stop()
    state.logger.close()  # commit what the store takes; the rest stays journaled for the next start
    state.store.close()


def create_app(
    settings: Settings | None = None,
    resolver: Resolver | None = None,
    registry_ops: RegistryOps | None = None,
    on_start: Callable[[ServiceState], object] | None = None,
) -> FastAPI:
    """Build the app: an API replica (inference, prediction log, feedback, shadow/canary, pages).

    Args:
        settings: service settings (default: from the environment).
        resolver: returns ``(version, model_dir)`` of the model to serve; default follows the
            registry's champion alias.
        registry_ops: the registry (default: the MLflow registry of ``settings``).
        on_start: hook called with the state once everything is up (tests); whatever it adds to
            ``state.background`` is stopped with the app.
    """
    settings = settings or get_settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = _start_state(settings, metrics, resolver, registry_ops)
        app.state.service = state
        if on_start is not None:
            on_start(state)
        # What exists now (imported modules, settings, the model follower) lives as long as the
        # process. Freezing it keeps the collector's full passes from rescanning it on the request
        # path: under load they paused the event loop for 45-160 ms (gc.callbacks, bench-serve).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            _stop_state(state)
            app.state.service = None

    app = FastAPI(
        title="mnistops",
        version=__version__,
        description="MNIST digit classifier with a durable prediction log, feedback and monitoring.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_openapi(app, settings)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(predict.router)
    app.include_router(admin.router_for(settings))
    app.include_router(ops.router)
    app.include_router(monitoring.router)
    app.mount("/static", StaticFiles(directory=Path(static_dir())), name="static")
    return app
