"""HTTP service: a FastAPI app around one Predictor, built to survive hostile and careless clients.

    POST /v1/depth      image as multipart field ``image`` or as the raw body;
                        ?format=png16 | npy | color | json  (json: &values=1 adds the depth map as
                        base64 float32, &color=1 a base64 colour PNG; the web page uses both)
    GET  /v1/models     the loaded variant and the presets
    GET  /healthz       liveness (always public)
    GET  /metrics       Prometheus text: requests by route and status, latency histogram, queue depth
    GET  /              a page to upload or drop an image and read depths by hovering (public; it
                        sends the token the user types)
    GET  /docs, /redoc, /openapi.json   the API description

Defences:

- Work is never done on the event loop: decoding, inference and encoding run in a bounded worker
  pool (``workers`` threads); at most ``queue`` more requests wait, the rest get 503 with
  Retry-After, before their body is read. ``/healthz`` stays fast whatever the load.
- The body is read as a stream with the byte limit enforced while reading (chunked uploads too) and a
  deadline for the whole body (408); multipart is parsed in memory (never spooled to disk).
- Only PNG, JPEG, WebP, BMP, TIFF and PPM are decoded, recognised by content; the declared size is
  checked from the header before decoding (pixel limit and longest side).
- With a token (never empty), every route but ``/healthz`` and the page needs ``Authorization:
  Bearer <token>``, checked before anything else (validation included).
- Every error, 404, 422 and 500 included, is JSON ``{"error", "status"}`` with no internals and no echo
  of the input, and every response is counted in ``/metrics``.
- :func:`serve` adds connection-level limits: a connection cap, a deadline to send the first request,
  the keep-alive timeout, and h11's header size limit.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .errors import ConfigError, FastDPTError, ImageError, ImageTooLargeError
from .io import MAX_PIXELS, OUTPUTS, decode_image
from .options import MAX_CONNECTIONS, MAX_UPLOAD_MB
from .predict import Predictor
from .presets import list_models
from .stabilize import MODES

log = logging.getLogger("fastdpt.serve")

MAX_BYTES = MAX_UPLOAD_MB * 2**20
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers allowed on top of the image's bytes
BODY_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff", "image/x-portable-pixmap",
              "application/octet-stream")
def served_formats() -> tuple[str, ...]:
    """What ``?format=`` takes: the output formats the service offers (fastdpt.io's registry), and json."""
    return (*(name for name, out in OUTPUTS.items() if out.served), "json")

PUBLIC = ("/healthz", "/")


@dataclass(frozen=True)
class Limits:
    """What one server accepts. ``workers``: threads that decode, infer and encode (inference itself
    is serialised by the predictor's lock, so more workers mostly add memory); ``queue``: requests
    that may wait for a worker before new ones get 503; ``read_timeout_s``: deadline to receive a
    whole body; ``sessions`` / ``session_idle_s`` / ``session_pixels``: video sessions held at once,
    the idle time after which one ends, and the most pixels of output each keeps between frames."""

    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    workers: int = 1
    queue: int = 8
    read_timeout_s: float = 30.0
    sessions: int = 64
    session_idle_s: float = 300.0
    session_pixels: int = 1_000_000

    def __post_init__(self) -> None:
        if not self.session_idle_s > 0:
            raise ConfigError(f"session_idle_s must be positive, got {self.session_idle_s}")
        for name in ("max_bytes", "max_pixels", "workers", "sessions", "session_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.queue < 0 or not self.read_timeout_s > 0:
            raise ConfigError("queue must be >= 0 and read_timeout_s > 0")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        self.status, self.message, self.headers = status, message, headers


def check_token(token: str | None) -> str | None:
    """A usable token or None; an empty or blank token is refused (it would lock everyone out)."""
    if token is None:
        return None
    if not token.strip():
        raise ConfigError("the token is empty: give a non-empty --token / FASTDPT_TOKEN, or none at all")
    return token.strip()


class DepthService:
    """The service's work, apart from HTTP wiring: the token check, bounded body reads, the worker
    pool, decode -> infer -> stabilise -> encode, video sessions and the Prometheus metrics.
    :func:`router` maps routes onto it; :func:`create_app` adds the guard and the error handlers."""

    ROUTES = ("/v1/depth", "/v1/models", "/healthz", "/metrics", "/", "/docs", "/redoc", "/openapi.json",
              "/v1/sessions")

    def __init__(self, predictor: Predictor, token: str | None, limits: Limits) -> None:
        self.predictor, self.limits, self.token = predictor, limits, check_token(token)
        self.pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="fastdpt-serve")
        self.sessions = Sessions(limits.sessions, limits.session_idle_s, limits.session_pixels)
        self.registry = CollectorRegistry()
        self.requests = Counter("fastdpt_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("fastdpt_inference_seconds", "Depth request latency (decode to encoded answer)",
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry)
        self.waiting = Gauge("fastdpt_requests_in_flight", "Depth requests running or queued", registry=self.registry)
        self.in_flight = 0
        self.page = resources.files("fastdpt").joinpath("static/index.html").read_text()

    # -- the guard --
    def route(self, path: str) -> str:
        """The metrics label of a path (unknown paths are ``other``, so clients cannot grow the labels)."""
        path = "/v1/sessions" if path.startswith("/v1/sessions/") else path
        return path if path in self.ROUTES else "other"

    def authorised(self, request: Request) -> bool:
        if self.token is None or request.url.path in PUBLIC:
            return True
        got = request.headers.get("authorization", "")
        return got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), self.token.encode())

    async def expire_sessions(self) -> None:
        """Idle sessions go on a timer, not only when another session request comes."""
        while True:
            await asyncio.sleep(max(0.05, min(30.0, self.sessions.idle_s / 4)))
            self.sessions.expire()

    # -- the body --
    async def read_body(self, request: Request, limit: int) -> bytes:
        """The whole body, refused (413) as soon as it passes ``limit`` and (408) when it does not
        arrive within the read deadline."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"upload larger than {self.limits.max_bytes} bytes")
        chunks: list[bytes] = []

        async def receive() -> None:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"upload larger than {self.limits.max_bytes} bytes")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(receive(), self.limits.read_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the upload did not arrive within {self.limits.read_timeout_s:g} s") from None
        return b"".join(chunks)

    async def read_image_bytes(self, request: Request) -> bytes:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            body = await self.read_body(request, self.limits.max_bytes + MULTIPART_OVERHEAD)
            data = multipart_field(body, request.headers["content-type"], "image")
        elif ctype in BODY_TYPES:
            data = await self.read_body(request, self.limits.max_bytes)
        elif not ctype:
            raise ApiError(415, "no Content-Type: send the image with its type (e.g. image/png) or as multipart")
        else:
            raise ApiError(415, f"unsupported content type {ctype[:80]}; send PNG, JPEG, WebP, BMP or TIFF")
        if len(data) > self.limits.max_bytes:
            raise ApiError(413, f"upload larger than {self.limits.max_bytes} bytes")
        if not data:
            raise ApiError(400, "empty upload")
        return data

    # -- the work (in the pool, never on the event loop) --
    def work(self, data: bytes, fmt: str, values: bool, color: bool, t0: float, session=None):
        """Decode, infer, stabilise (in a session), encode."""
        try:
            image = decode_image(data, self.limits.max_pixels, "image")
        except ImageTooLargeError as e:
            raise ApiError(413, str(e)) from None
        except ImageError as e:
            raise ApiError(400, str(e)) from None
        del data
        try:
            result = self.predictor.predict(image)
        except FastDPTError as e:
            raise ApiError(400, str(e)) from None
        d = result.depth
        if session is not None:
            stabilizer, lock = session
            with lock:  # a session's frames are stabilised one after the other
                try:
                    d = stabilizer(image, d)
                except FastDPTError as e:  # a frame too small for the flow
                    raise ApiError(400, str(e)) from None
        return self.encode(d, result.kind, fmt, values, color, t0)

    def encode(self, d: np.ndarray, kind: str, fmt: str, values: bool, color: bool, t0: float):
        """(body, media type or None for JSON, kind): a served output format of :data:`fastdpt.io.OUTPUTS`
        (the colour map alone), or JSON."""
        if fmt != "json":
            out = OUTPUTS[fmt]
            return out.encode(d, kind, side_by_side=False), out.media_type, kind
        payload = {"shape": list(d.shape), "kind": kind, "model": self.predictor.config.name,
                   "unit": "m" if kind == "metric" else "relative inverse depth",
                   "min": float(np.nanmin(d)), "max": float(np.nanmax(d)), "mean": float(np.nanmean(d)),
                   "latency_ms": round((time.perf_counter() - t0) * 1000, 2)}
        if values:
            payload["values_f32_base64"] = base64.b64encode(d.astype("<f4", copy=False).tobytes()).decode()
        if color:
            payload["color_png_base64"] = base64.b64encode(OUTPUTS["color"].encode(d, kind, side_by_side=False)).decode()
        return payload, None, kind

    # -- the routes' logic --
    def session_for(self, stabilize: str, session: str | None):
        """The stabiliser a depth request uses (None without a session)."""
        if stabilize not in MODES:
            raise ApiError(400, f"stabilize must be one of {', '.join(MODES)}")
        if stabilize == "none" and session is None:
            return None
        if not session or not SESSION_RE.fullmatch(session):
            raise ApiError(400, "stabilize needs session=<id>, an id the service issued (POST /v1/sessions)")
        return self.sessions.get(session, None if stabilize == "none" else stabilize)

    async def depth(self, request: Request, fmt: str, values: bool, color: bool, stabilize: str,
                    session: str | None) -> Response:
        if fmt not in served_formats():
            raise ApiError(400, f"format must be one of {', '.join(served_formats())}")
        stream = self.session_for(stabilize, session)
        try:  # the body first (within its deadline): a slow upload holds a connection, never an inference slot
            data = await self.read_image_bytes(request)
        except ClientDisconnect:
            raise ApiError(400, "the client went away during the upload") from None
        if self.in_flight >= self.limits.workers + self.limits.queue:
            raise ApiError(503, "busy: too many requests in progress, retry shortly", {"Retry-After": "1"})
        self.in_flight += 1
        self.waiting.set(self.in_flight)
        try:
            t0 = time.perf_counter()
            body, media, kind = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.work, data, fmt, values, color, t0, stream)
        finally:
            self.in_flight -= 1
            self.waiting.set(self.in_flight)
        self.latency.observe(time.perf_counter() - t0)
        headers = {"X-Depth-Kind": kind, "X-Model": self.predictor.config.name}
        if media is None:
            return JSONResponse(body, headers=headers)
        return Response(body, media_type=media, headers=headers)

    def start_session(self, stabilize: str) -> dict:
        if stabilize not in SESSION_MODES:
            raise ApiError(400, f"stabilize must be one of {', '.join(SESSION_MODES)}")
        sid = self.sessions.start(stabilize, self.predictor.config.output_kind)
        return {"session": sid, "stabilize": stabilize, "idle_timeout_s": self.sessions.idle_s,
                "max_pixels_kept": self.sessions.keep_pixels}

    def end_session(self, session: str) -> dict:
        if not self.sessions.drop(session):
            raise ApiError(404, "no such session")
        return {"ended": session}

    def models(self) -> dict:
        return {"loaded": self.predictor.config.name, "kind": self.predictor.config.output_kind,
                "presets": list_models()}

    def health(self) -> dict:
        return {"status": "ok", "model": self.predictor.config.name, "in_flight": self.in_flight}

    def metrics(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def router(service: DepthService) -> APIRouter:
    """The HTTP routes over a :class:`DepthService`."""
    r = APIRouter()

    @r.post("/v1/depth")
    async def depth(request: Request, format: str = "json", values: int = 0, color: int = 0, stabilize: str = "none",
                    session: str | None = None):
        return await service.depth(request, format, bool(values), bool(color), stabilize, session)

    @r.post("/v1/sessions", status_code=201)
    def start_session(stabilize: str = "flow"):
        """A video session: the service issues its id (unguessable), so no other client can feed or
        end it; it ends after ``session_idle_s`` without a frame, or with DELETE."""
        return service.start_session(stabilize)

    @r.delete("/v1/sessions/{session}")
    def end_session(session: str):
        return service.end_session(session)

    r.add_api_route("/v1/models", service.models, methods=["GET"])
    r.add_api_route("/metrics", service.metrics, methods=["GET"])

    @r.get("/healthz")
    async def healthz():
        return service.health()

    @r.get("/", response_class=HTMLResponse)
    def index():
        return service.page

    return r


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def create_app(predictor: Predictor, token: str | None = None, max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS, limits: Limits | None = None) -> FastAPI:
    """The FastAPI app: a :class:`DepthService`, its :func:`router`, the guard (auth first; every
    outcome, 500s included, JSON and counted) and the JSON error handlers."""
    service = DepthService(predictor, token, limits or Limits(max_bytes=max_bytes, max_pixels=max_pixels))

    @asynccontextmanager
    async def lifespan(app):
        expiry = asyncio.create_task(service.expire_sessions())
        yield
        expiry.cancel()
        service.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="fastdpt", version="1", lifespan=lifespan)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        route = service.route(request.url.path)
        if not service.authorised(request):
            response = _error(401, "missing or wrong bearer token")
        else:
            try:
                response = await call_next(request)
            except Exception:  # noqa: BLE001 - the one place that turns any failure into a clean 500
                log.exception("unhandled error on %s", route)
                response = _error(500, "internal error")
        service.requests.labels(route, str(response.status_code)).inc()
        return response

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, "request refused")
        return _error(exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        names = sorted({str(e.get("loc", ["", "?"])[-1]) for e in exc.errors()})
        return _error(422, f"invalid value for {', '.join(names)}")

    app.include_router(router(service))
    app.state.predictor, app.state.limits, app.state.sessions, app.state.service = \
        predictor, service.limits, service.sessions, service
    return app


SESSION_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
SESSION_MODES = tuple(m for m in MODES if m != "none")  # the stabiliser's own modes


class Sessions:
    """Stabiliser state per video session, under ids the service issues (``secrets.token_urlsafe``):
    at most ``limit`` (the least recently used goes first), dropped after ``idle_s`` without a frame
    (:meth:`expire`, run on a timer by the app), each keeping at most ``keep_pixels`` of its last output
    (so 64 sessions of 25 MP frames hold ~0.3 GB, not 6 GB)."""

    def __init__(self, limit: int = 64, idle_s: float = 300.0, keep_pixels: int = 1_000_000) -> None:
        self.limit, self.idle_s, self.keep_pixels = limit, idle_s, keep_pixels
        self.items: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def start(self, mode: str, kind: str) -> str:
        import secrets

        from .stabilize import Stabilizer

        sid = secrets.token_urlsafe(18)
        with self.lock:
            self.items[sid] = [Stabilizer(mode, kind, keep_pixels=self.keep_pixels), threading.Lock(), time.monotonic()]
            while len(self.items) > self.limit:
                self.items.popitem(last=False)
        return sid

    def expire(self) -> int:
        now = time.monotonic()
        with self.lock:
            old = [k for k, v in self.items.items() if now - v[2] > self.idle_s]
            for key in old:
                del self.items[key]
        return len(old)

    def get(self, sid: str, mode: str | None):
        """The stabiliser of a session the service issued (404 otherwise); ``mode`` must be its mode
        when given."""
        self.expire()
        with self.lock:
            item = self.items.get(sid)
            if item is None:
                raise ApiError(404, "no such session (it ended or expired): start one with POST /v1/sessions")
            if mode is not None and item[0].mode != mode:
                raise ApiError(400, f"session {sid} stabilises with {item[0].mode}, not {mode}")
            item[2] = time.monotonic()
            self.items.move_to_end(sid)
            return item[0], item[1]

    def drop(self, sid: str) -> bool:
        with self.lock:
            return self.items.pop(sid, None) is not None


def multipart_field(body: bytes, content_type: str, name: str, max_parts: int = 8) -> bytes:
    """The bytes of form field ``name`` in a multipart body held in memory (nothing touches disk)."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart upload without a boundary")
    parts: list[dict] = []
    cur: dict = {}

    def begin():
        if len(parts) >= max_parts:
            raise ApiError(400, f"more than {max_parts} multipart fields")
        cur.clear()
        cur.update(headers={}, field=b"", value=b"", data=[])

    def header_end():
        cur["headers"][cur["field"].lower()] = cur["value"]
        cur["field"], cur["value"] = b"", b""

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": lambda d, s, e: cur.__setitem__("field", cur["field"] + d[s:e]),
        "on_header_value": lambda d, s, e: cur.__setitem__("value", cur["value"] + d[s:e]),
        "on_header_end": header_end,
        "on_part_data": lambda d, s, e: cur["data"].append(d[s:e]),
        "on_part_end": lambda: parts.append(dict(cur)),
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError:
        raise ApiError(400, "malformed multipart upload") from None
    for part in parts:
        _, disp = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if disp.get(b"name") == name.encode():
            return b"".join(part["data"])
    raise ApiError(400, f"multipart upload needs a file field named '{name}'")


# -- the server process ------------------------------------------------------------------------------
def _protocol(max_connections: int, first_request_s: float):
    """uvicorn's h11 protocol with a connection cap and a header deadline for **every** request on a
    connection: a new connection must send its first request's headers within ``first_request_s``, and
    so must each later request on a kept-alive connection once its first byte arrives (uvicorn waits
    forever for headers that trickle in a line at a time, so 64 such connections held every slot).

    At the cap, a new connection closes the connection idle longest (no request in progress: silent,
    or kept alive between requests) and takes its place; only when every connection is busy with a
    request is the new one closed. So a crowd of idle connections cannot lock everyone else out
    (1000 of them made half of all /healthz probes fail behind uvicorn's ``limit_concurrency``, whose
    503 was plain text and uncounted: it is not used; the service's own JSON 503 limits load)."""
    import time

    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Guarded(H11Protocol):
        _headers_due = None
        _idle_since = 0.0

        def connection_made(self, transport):
            super().connection_made(transport)
            self._idle_since = time.monotonic()
            if len(self.connections) > max_connections:
                idle = [c for c in self.connections if c is not self and isinstance(c, Guarded) and c._idle()]
                if not idle:
                    transport.close()
                    return
                min(idle, key=lambda c: c._idle_since).transport.close()
            self._arm()

        def _idle(self) -> bool:
            """No request in progress: none started, or the last one answered."""
            cycle = getattr(self, "cycle", None)
            return (self.conn.their_state is h11.IDLE and (cycle is None or cycle.response_complete)
                    and not self.transport.is_closing())

        def _arm(self):
            if self._headers_due is None:
                self._headers_due = self.loop.call_later(first_request_s, self._close_if_headers_late)

        def _close_if_headers_late(self):
            self._headers_due = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # still no complete request head: a silent or trickling client

        def data_received(self, data):
            if self.conn.their_state is h11.IDLE:
                self._arm()  # a request is starting (or a silent one is still being waited for)
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self._headers_due is not None:
                self._headers_due.cancel()  # its head arrived in time
                self._headers_due = None

        def on_response_complete(self):
            super().on_response_complete()
            self._idle_since = time.monotonic()
            if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
                self._arm()  # a pipelined next request is already partly here

        def connection_lost(self, exc):
            if self._headers_due is not None:
                self._headers_due.cancel()
                self._headers_due = None
            super().connection_lost(exc)

    return Guarded


def server_config(app, host: str = "127.0.0.1", port: int = 8000, max_connections: int = MAX_CONNECTIONS,
                  first_request_s: float = 10.0, keep_alive_s: float = 5.0, log_level: str = "info"):
    """The uvicorn configuration :func:`serve` runs (tests start real servers with it too)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=_protocol(max_connections, first_request_s),
                          timeout_keep_alive=keep_alive_s,
                          h11_max_incomplete_event_size=16 * 1024, server_header=False)


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_bytes: int = MAX_BYTES, limits: Limits | None = None, allow_no_token: bool = False,
          max_connections: int = MAX_CONNECTIONS) -> None:
    """Run the service. Listening beyond this machine (any host but loopback) needs a token, unless
    ``allow_no_token`` says the exposure is intended."""
    import uvicorn

    token = check_token(token)
    if token is None and not allow_no_token and host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"serving on {host} without a token would let anyone use it: give --token, "
                          "--token-file or FASTDPT_TOKEN (or --allow-no-token if that is intended)")
    app = create_app(predictor, token, limits=limits or Limits(max_bytes=max_bytes))
    uvicorn.Server(server_config(app, host, port, max_connections)).run()


def read_token(token: str | None = None, token_file: str | os.PathLike | None = None) -> str | None:
    """The token from ``token`` / ``$FASTDPT_TOKEN``, else from ``token_file`` / ``$FASTDPT_TOKEN_FILE``
    (Docker secrets), else None. A variable that is set but empty is an error, not "no token"."""
    if token is not None and token_file is not None:
        raise ConfigError("give --token or --token-file, not both")
    token = token if token is not None else os.environ.get("FASTDPT_TOKEN")
    if token is None:
        token_file = token_file if token_file is not None else os.environ.get("FASTDPT_TOKEN_FILE")
    if token is None and token_file is not None:
        try:
            token = open(token_file).read()
        except OSError as e:
            raise ConfigError(f"cannot read the token file {token_file}: {e.strerror}") from None
    return check_token(token)
