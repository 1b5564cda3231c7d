"""HTTP service: FastAPI app around one Predictor.

    POST /v1/depth      image as multipart field ``image`` or as the raw body;
                        ?format=png16 | npy | color | json  (json: &values=1 adds the depth map as
                        base64 float32, &color=1 a base64 colour PNG; the web page uses both)
    GET  /v1/models     the loaded variant and the presets
    GET  /healthz       liveness
    GET  /metrics       Prometheus text: requests by route and status, latency histogram
    GET  /              a page to upload or drop an image and read depths by hovering

Each app owns its metrics registry (no global state). Inference runs in the server's thread pool
and the Predictor's lock serialises it, so concurrent requests never share the model unsafely.
"""

from __future__ import annotations

import base64
import hmac
import io
import time
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import ImageError, ImageTooLargeError
from .io import MAX_PIXELS, decode_image, depth_to_png16, encode_png
from .predict import Predictor
from .presets import list_models
from .viz import colorize

MAX_BYTES = 20 * 2**20
IMAGE_TYPES = ("image/", "application/octet-stream")


def create_app(predictor: Predictor, token: str | None = None, max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS):
    app = FastAPI(title="fastdpt", version="1", docs_url="/docs")
    registry = CollectorRegistry()
    requests = Counter("fastdpt_requests", "HTTP requests", ["route", "status"], registry=registry)
    latency = Histogram("fastdpt_inference_seconds", "Depth inference latency (decode to encoded answer)",
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=registry)

    class ApiError(Exception):
        def __init__(self, status: int, message: str):
            self.status, self.message = status, message

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        requests.labels(getattr(route, "path", "other"), str(response.status_code)).inc()
        return response

    def check_token(request: Request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), token.encode())):
            raise ApiError(401, "missing or wrong bearer token")

    async def read_upload(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes + 4096:
            raise ApiError(413, f"upload larger than {max_bytes} bytes")
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4, max_part_size=max_bytes + 1)
            upload = form.get("image")
            if upload is None or not hasattr(upload, "read"):
                raise ApiError(400, "multipart upload needs a file field named 'image'")
            if upload.content_type and not upload.content_type.startswith(IMAGE_TYPES):
                raise ApiError(415, f"unsupported content type {upload.content_type}")
            data = await upload.read(max_bytes + 1)
        elif ctype.startswith(IMAGE_TYPES) or ctype == "":
            data = b""
            async for chunk in request.stream():
                data += chunk
                if len(data) > max_bytes:
                    break
        else:
            raise ApiError(415, f"unsupported content type {ctype}; send an image")
        if len(data) > max_bytes:
            raise ApiError(413, f"upload larger than {max_bytes} bytes")
        if not data:
            raise ApiError(400, "empty upload")
        return data

    def decode(data: bytes) -> np.ndarray:
        try:
            return decode_image(data, max_pixels, "image")
        except ImageTooLargeError as e:
            raise ApiError(413, str(e)) from None
        except ImageError as e:
            raise ApiError(400, str(e)) from None

    @app.post("/v1/depth")
    async def depth(request: Request, format: str = "json", values: int = 0, color: int = 0):
        check_token(request)
        if format not in ("png16", "npy", "color", "json"):
            raise ApiError(400, "format must be png16, npy, color or json")
        data = await read_upload(request)
        t0 = time.perf_counter()
        image = decode(data)
        result = await run_in_threadpool(predictor.predict, image)
        d = result.depth
        headers = {"X-Depth-Kind": result.kind, "X-Model": predictor.config.name}
        if format == "png16":
            body, media = encode_png(depth_to_png16(d, result.kind)), "image/png"
        elif format == "npy":
            buf = io.BytesIO()
            np.save(buf, d.astype(np.float32))
            body, media = buf.getvalue(), "application/octet-stream"
        elif format == "color":
            body, media = encode_png(colorize(d, result.kind)), "image/png"
        else:
            payload = {"shape": list(d.shape), "kind": result.kind, "model": predictor.config.name,
                       "unit": "m" if result.kind == "metric" else "relative inverse depth",
                       "min": float(np.nanmin(d)), "max": float(np.nanmax(d)), "mean": float(np.nanmean(d)),
                       "latency_ms": round((time.perf_counter() - t0) * 1000, 2)}
            if values:
                payload["values_f32_base64"] = base64.b64encode(d.astype("<f4").tobytes()).decode()
            if color:
                payload["color_png_base64"] = base64.b64encode(encode_png(colorize(d, result.kind))).decode()
            latency.observe(time.perf_counter() - t0)
            return JSONResponse(payload, headers=headers)
        latency.observe(time.perf_counter() - t0)
        return Response(body, media_type=media, headers=headers)

    @app.get("/v1/models")
    def models():
        return {"loaded": predictor.config.name, "kind": predictor.config.output_kind, "presets": list_models()}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": predictor.config.name}

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    page = resources.files("fastdpt").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    app.state.predictor = predictor
    return app


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_bytes: int = MAX_BYTES) -> None:
    import uvicorn

    uvicorn.run(create_app(predictor, token, max_bytes), host=host, port=port, log_level="info")
