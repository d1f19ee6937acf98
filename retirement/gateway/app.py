"""The local gateway: routes `<model>@<alias or version>` predict requests, serves version files, exports metrics.

Routes::

    POST /v1/models/{name}@{alias_or_version}/predict       {"inputs": ...} -> {"model", "version", "outputs"}
    GET  /v1/models/{name}/versions/{version}/files          [{"path", "size", "sha256"}]
    GET  /v1/models/{name}/versions/{version}/files/{path}   the file (HTTP Range: 200 / 206 / 416)
    GET  /metrics                                            Prometheus text format
    GET  /healthz                                            {"status": "ok", "pid", "root"}

Every predict request is written to the request log; downloads are not traffic and are not logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from retirement.errors import InputError, NotFoundError
from retirement.gateway.requestlog import RequestLog, RequestRecord
from retirement.platforms.local import VERSION_RE, LocalRegistry

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"message": message, **extra}}, status_code=status)


def predict_outputs(inputs: Any, version: str) -> Any:
    """Deterministic outputs for ``inputs`` from ``version``: a churn score and a label per input."""

    def one(item: Any) -> dict[str, Any]:
        text = json.dumps(item, sort_keys=True, default=str)
        digest = hashlib.sha256(f"{version}\n{text}".encode()).digest()
        score = round(int.from_bytes(digest[:8], "big") / 2**64, 6)
        return {"score": score, "label": "churn" if score >= 0.5 else "stay"}

    return [one(item) for item in inputs] if isinstance(inputs, list) else one(inputs)


class _Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "retire_gateway_requests",
            "Predict requests answered, by model, version and HTTP status.",
            ["model", "version", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "retire_gateway_request_errors",
            "Predict requests answered with an error (5xx, 404 unknown/deleted, 410 deactivated).",
            ["model", "version"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "retire_gateway_request_duration_seconds",
            "Time to answer a predict request, in seconds.",
            ["model", "version"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

    def observe(self, model: str, version: str | None, status: int, seconds: float) -> None:
        label = version or ""
        self.requests.labels(model=model, version=label, status=str(status)).inc()
        if status >= 500 or status in (404, 410):
            self.errors.labels(model=model, version=label).inc()
        self.duration.labels(model=model, version=label).observe(seconds)


def create_app(registry: LocalRegistry, log: RequestLog) -> ASGIApp:
    """The gateway as an ASGI app; its lifespan starts and stops the request log's writer.

    Args:
        registry: the local registry whose aliases route the requests.
        log: where every predict request is written.
    """
    metrics = _Metrics()

    def _route(name: str, requested: str) -> tuple[str | None, Response | None]:
        """(resolved version, error response) for a predict request; runs in a worker thread."""
        try:
            ref = registry.resolve(name, requested)
        except InputError as exc:
            return None, _error(400, str(exc), field=exc.field)
        except NotFoundError as exc:
            # A request naming a version that is gone still names it: keep that visible in the log.
            named = requested if VERSION_RE.match(requested) else None
            return named, _error(404, str(exc), model=name, version=named)
        version = ref.version
        if not registry.is_active(ref):
            return version, _error(410, f"{ref} is deactivated", model=name, version=version)
        return version, None

    async def predict(request: Request) -> Response:
        arrived = datetime.now(UTC)
        started = time.perf_counter()
        target = request.path_params["target"]
        name, sep, requested = target.partition("@")
        version: str | None = None
        try:
            if not sep or not name or not requested:
                response: Response = _error(
                    400,
                    f"target {target!r} is not of the form name@alias_or_version",
                    field="target",
                    allowed="e.g. churn-model@production or churn-model@3",
                )
            else:
                version, problem = await run_in_threadpool(_route, name, requested)
                response = problem or await _answer(request, name, version)
        except Exception:
            logger.exception("predict %s failed", target[:200])
            response = _error(500, "internal error in the gateway")
        elapsed = time.perf_counter() - started
        model_label = name[:200]
        metrics.observe(model_label, version, response.status_code, elapsed)
        log.record(
            RequestRecord(
                at=arrived,
                model=model_label,
                requested=requested[:200],
                version=version,
                status=response.status_code,
                latency_ms=elapsed * 1000,
            )
        )
        return response

    async def _answer(request: Request, name: str, version: str | None) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"body is {len(body)} bytes", field="body", allowed=f"at most {MAX_BODY_BYTES} bytes")
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            return _error(400, "body is not JSON", field="body", allowed='{"inputs": ...}')
        if not isinstance(payload, dict) or "inputs" not in payload:
            return _error(400, "body has no 'inputs'", field="inputs", allowed='{"inputs": ...}')
        if version is None:
            return _error(500, "the request resolved to no version")
        return JSONResponse({"model": name, "version": version, "outputs": predict_outputs(payload["inputs"], version)})

    def _version_ref(request: Request) -> Any:
        name = request.path_params["name"]
        version = request.path_params["version"]
        ref = registry.resolve(name, version) if VERSION_RE.match(version) else None
        if ref is None:
            raise InputError("version", f"{version!r} is not a version number", "a version number such as '1'")
        return ref

    async def list_files(request: Request) -> Response:
        def work() -> Response:
            try:
                ref = _version_ref(request)
                return JSONResponse([r.model_dump() for r in registry.file_records(ref)])
            except InputError as exc:
                return _error(400, str(exc), field=exc.field)
            except NotFoundError as exc:
                return _error(404, str(exc))

        return await run_in_threadpool(work)

    async def get_file(request: Request) -> Response:
        def work() -> Response:
            try:
                ref = _version_ref(request)
                records = {r.path: r for r in registry.file_records(ref)}
                path = registry.file_path(ref, request.path_params["path"])
                record = records[request.path_params["path"]]
            except InputError as exc:
                return _error(400, str(exc), field=exc.field)
            except NotFoundError as exc:
                return _error(404, str(exc))
            return FileResponse(
                path,
                media_type="application/octet-stream",
                headers={"x-sha256": record.sha256, "etag": f'"{record.sha256}"'},
            )

        return await run_in_threadpool(work)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "pid": os.getpid(), "root": str(registry.root)})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(registry.init)
        log.start()
        try:
            yield
        finally:
            log.close()

    app = Starlette(
        routes=[
            Route("/v1/models/{target}/predict", predict, methods=["POST"]),
            Route("/v1/models/{name}/versions/{version}/files", list_files, methods=["GET"]),
            Route("/v1/models/{name}/versions/{version}/files/{path:path}", get_file, methods=["GET", "HEAD"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.metrics_registry = metrics.registry
    return app


__all__ = ["create_app", "predict_outputs"]
