"""The FastAPI application factory.

``create_app(settings)`` wires the prediction store and its batching logger, the model follower
(which tracks the registry's ``champion`` alias), metrics, routes and error mapping. Nothing is
created on import; the lifespan builds and tears everything down (SIGTERM → uvicorn shutdown →
the logger flushes every accepted prediction).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnistops import __version__
from mnistops.service.errors import install_error_handlers
from mnistops.service.inference import ModelFollower
from mnistops.service.metrics import LogCollector, ServiceMetrics
from mnistops.service.openapi import install_openapi
from mnistops.service.routes import admin, ops, predict
from mnistops.service.routes.ops import static_dir
from mnistops.service.state import Resolver, ServiceState
from mnistops.settings import Settings, get_settings

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


def default_resolver(settings: Settings) -> tuple[Resolver, Any]:
    """Follow the registry's ``champion`` alias (one registry call per poll)."""
    from mnistops.registry.core import Registry

    reg = Registry(settings)
    return (lambda: reg.resolve_alias("champion")), reg


def _shadow_runner(settings: Settings, reg: Any, logger: Any, metrics: ServiceMetrics) -> Any:
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


def create_app(
    settings: Settings | None = None,
    resolver: Resolver | None = None,
    registry_ops: Any = None,
    on_start: Callable[[ServiceState], object] | None = None,
) -> FastAPI:
    """Build the app.

    Args:
        settings: service settings (default: from the environment).
        resolver: returns ``(version, model_dir)`` of the model to serve; default follows the
            registry's champion alias.
        registry_ops: object with promote/rollback/get_version/history (default: the registry).
        on_start: hook called with the state once everything is up (e.g. start the monitor).
    """
    settings = settings or get_settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from mnistops.service.logger import PredictionLogger
        from mnistops.store.predictions import PredictionStore

        settings.ensure_dirs()
        res, reg = resolver, registry_ops
        if res is None:
            res, default_reg = default_resolver(settings)
            reg = reg or default_reg
        store = PredictionStore(settings.database)
        logger = PredictionLogger(
            store,
            settings.spill_path,
            batch_size=settings.log_batch_size,
            flush_seconds=settings.log_flush_seconds,
        )

        def on_change(old: Any, new: Any) -> None:
            metrics.set_model(new.version, new.backend)
            metrics.model_swaps.inc()
            log.info("now serving model version %s (%s)", new.version, new.backend)

        follower = ModelFollower(
            res,
            backend=settings.inference_backend,
            poll_seconds=settings.model_poll_seconds,
            intra_op_threads=settings.inference_threads,
            on_change=on_change,
        )
        state = ServiceState(
            settings=settings,
            metrics=metrics,
            follower=follower,
            store=store,
            logger=logger,
            registry_ops=reg,
        )
        metrics.registry.register(LogCollector(state.logger_stats))
        follower.start()
        if reg is not None and (settings.shadow_requests > 0 or settings.canary_share > 0):
            state.shadow = _shadow_runner(settings, reg, logger, metrics).start()
        app.state.service = state
        if on_start is not None:
            on_start(state)
        elif settings.loop_in_serve:
            from mnistops.controller.loop import attach_loop

            attach_loop(state)
        elif settings.monitor_in_serve:
            from mnistops.monitor.runner import attach_to_service

            attach_to_service(state)
        # What exists now (imported modules, settings, the model follower) lives as long as the
        # process. Freezing it keeps the collector's full passes from rescanning it on the request
        # path: under load they paused the event loop for 45-160 ms (gc.callbacks, bench-serve).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            for bg in reversed(state.background):
                try:
                    bg.stop()
                except Exception:  # keep shutting down the rest
                    log.exception("stopping %r failed", bg)
            follower.stop()
            if state.shadow is not None:
                state.shadow.stop()
            logger.close()  # flush: nothing accepted is lost
            store.close()
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
    from mnistops.service.routes import monitoring

    app.include_router(monitoring.router)
    app.mount("/static", StaticFiles(directory=Path(static_dir())), name="static")
    return app
