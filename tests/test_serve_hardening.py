"""The HTTP service against hostile and careless clients, on a real server on 127.0.0.1."""

import io
import socket
import tempfile
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import fastdpt  # noqa: E402
import fastdpt.serve as serve_mod  # noqa: E402
from conftest import TINY, running  # noqa: E402
from fastdpt.cli import app as cli  # noqa: E402
from fastdpt.errors import ConfigError  # noqa: E402
from fastdpt.predict import Predictor  # noqa: E402
from fastdpt.serve import Limits, create_app, read_token  # noqa: E402

METRIC = TINY.replace(metric=(0.01, 0.0125))
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PNG = {"Content-Type": "image/png"}


def _png(h=48, w=80, seed=0, mode="RGB"):
    buf = io.BytesIO()
    if mode == "RGB":
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    else:
        Image.new(mode, (w, h)).save(buf, "PNG")
    return buf.getvalue()


def _png_header(w, h):
    """A PNG that says it is w x h and holds no pixels (signature, IHDR, an empty IDAT, IEND): a pixel bomb's
    header, a few dozen bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


class SlowPredictor(Predictor):
    """A predictor whose inference takes ``delay`` seconds (what a big model costs)."""

    delay = 1.0

    def predict(self, image):
        time.sleep(self.delay)
        return super().predict(image)


@pytest.fixture(scope="module")
def predictor():
    return Predictor(fastdpt.create_model(METRIC).eval())


def test_healthz_stays_fast_while_decoding_and_inference_run(predictor, monkeypatch):
    real = serve_mod.decode_image
    decoding, release = threading.Event(), threading.Event()

    def held_decode(*a, **k):  # decoding a big image takes time; it must not block the event loop
        decoding.set()
        release.wait(60)
        return real(*a, **k)

    monkeypatch.setattr(serve_mod, "decode_image", held_decode)
    with running(create_app(predictor, TOKEN, limits=Limits(workers=1, queue=4))) as port:
        url = f"http://127.0.0.1:{port}"
        done = {}
        t = threading.Thread(target=lambda: done.setdefault("r", httpx.post(f"{url}/v1/depth", content=_png(),
                                                                            headers={**PNG, **AUTH}, timeout=90)))
        t.start()
        assert decoding.wait(30)
        try:  # every health check is answered while the decode is still held (no time limit to trip)
            with httpx.Client(base_url=url, timeout=30) as c:
                for _ in range(10):
                    assert c.get("/healthz").status_code == 200
            assert not release.is_set() and "r" not in done
        finally:
            release.set()
        t.join()
        assert done["r"].status_code == 200


def test_a_full_queue_answers_503_with_retry_after():
    slow = SlowPredictor(fastdpt.create_model(METRIC).eval())
    with running(create_app(slow, limits=Limits(workers=1, queue=1))) as port:
        url = f"http://127.0.0.1:{port}/v1/depth"
        results = []

        def hit():
            results.append(httpx.post(url, content=_png(), headers=PNG, timeout=30))

        ts = [threading.Thread(target=hit) for _ in range(4)]
        for t in ts:
            t.start()
            time.sleep(0.1)
        for t in ts:
            t.join()
        codes = sorted(r.status_code for r in results)
        assert codes == [200, 200, 503, 503], codes
        busy = next(r for r in results if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and busy.json() == {"error": busy.json()["error"], "status": 503}


def test_slow_uploads_do_not_take_inference_slots(predictor):
    # 9 uploads trickling a byte every 3 s held every slot for 30 s: a slot is now taken once the body is in
    with running(create_app(predictor, limits=Limits(workers=1, queue=0, read_timeout_s=5.0))) as port:
        body = _png()
        slow = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/depth HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
            slow.append(s)
        time.sleep(0.3)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            for _ in range(2):  # the one slot is free for complete requests
                assert c.post("/v1/depth", content=body, headers=PNG).status_code == 200
        for s in slow:
            s.close()


def test_uploads_are_limited_while_streaming_and_never_spooled(predictor, monkeypatch):
    def no_disk(*a, **k):
        raise AssertionError("an upload was spooled to a temporary file")

    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", no_disk)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_disk)

    def send_until_answered(port, head: bytes, first: bytes = b"") -> tuple[bytes, int]:
        """Stream a chunked body of zeros until the server answers; returns (reply, bytes sent)."""
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        sent, reply = 0, b""
        body = first
        try:
            while sent < 50 * 2**20 and b"\r\n\r\n" not in reply:
                chunk = body or b"\0" * 65536
                body = b""
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
                sock.setblocking(False)
                try:
                    reply += sock.recv(4096)
                except BlockingIOError:
                    pass
                except ConnectionError:
                    break
                finally:
                    sock.setblocking(True)
        except ConnectionError:
            pass
        sock.settimeout(5)
        try:
            while b"\r\n\r\n" not in reply:
                more = sock.recv(4096)
                if not more:
                    break
                reply += more
        except (socket.timeout, ConnectionError):
            pass
        sock.close()
        return reply, sent

    with running(create_app(predictor, limits=Limits(max_bytes=100_000))) as port:
        url = f"http://127.0.0.1:{port}/v1/depth"
        reply, sent = send_until_answered(port, b"POST /v1/depth HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n")
        assert reply.startswith(b"HTTP/1.1 413") and sent < 16 * 2**20, (reply[:40], sent)  # answered mid-upload (socket buffers hold a few MB)
        part = (b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n")
        reply, sent = send_until_answered(
            port, b"POST /v1/depth HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=xyz\r\n", part)
        assert reply.startswith(b"HTTP/1.1 413") and sent < 16 * 2**20, (reply[:40], sent)
        ok = httpx.post(url, files={"image": ("a.png", _png(), "image/png")}, timeout=30)  # in memory, no disk
        assert ok.status_code == 200


def test_the_token_guards_every_route_but_healthz_and_the_page(predictor):
    with running(create_app(predictor, TOKEN)) as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            for path in ("/metrics", "/v1/models", "/docs", "/redoc", "/openapi.json", "/nowhere"):
                r = c.get(path)
                assert r.status_code == 401 and r.json() == {"error": "missing or wrong bearer token", "status": 401}, path
            assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
            r = c.post("/v1/depth?values=" + "x" * 5000, content=_png(), headers=PNG)
            assert r.status_code == 401  # the token is checked before anything else, validation included
            c.headers.update(AUTH)
            r = c.post("/v1/depth?values=" + "x" * 5000, content=_png(), headers=PNG)
            assert r.status_code == 422 and r.json() == {"error": "invalid value for values", "status": 422}
            assert "xxxx" not in r.text
            assert c.get("/openapi.json").status_code == 200 and c.get("/metrics").status_code == 200
    for bad in ("", "   "):
        with pytest.raises(ConfigError, match="empty"):
            create_app(predictor, bad)


def test_one_json_error_shape_and_every_error_counted(predictor, monkeypatch):
    with running(create_app(predictor, limits=Limits(max_pixels=30_000_000))) as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            wide = _png(1, 60_000, mode="1")  # a few hundred bytes; too wide to encode back as PNG
            r = c.post("/v1/depth?format=color", content=wide, headers=PNG)
            assert r.status_code == 413 and "side longer" in r.json()["error"]
            assert c.post("/v1/depth", content=_png()).status_code == 415  # no Content-Type
            r = c.post("/v1/depth", content=b"<svg xmlns='http://www.w3.org/2000/svg'/>", headers={"Content-Type": "image/svg+xml"})
            assert r.status_code == 415
            gif = io.BytesIO()
            Image.new("RGB", (8, 8)).save(gif, "GIF")
            r = c.post("/v1/depth", content=gif.getvalue(), headers=PNG)  # the type lies; the content decides
            assert r.status_code == 400 and "not a PNG/JPEG" in r.json()["error"] and "0x" not in r.json()["error"]
            # a 30000 x 30000 header (Pillow's own bomb limit trips before ours): too large, 413, in our words
            r = c.post("/v1/depth", content=_png_header(30000, 30000), headers=PNG)
            assert r.status_code == 413 and "larger than the limit" in r.json()["error"], r.text
            assert "Error" not in r.json()["error"]
            r = c.post("/v1/depth", content=_png(200, 300)[:600], headers=PNG)  # truncated
            assert r.status_code == 400 and r.json()["error"] == "cannot decode the image: the data is truncated or corrupt"

            def boom(image):
                raise RuntimeError("secret internals at 0xdeadbeef")

            monkeypatch.setattr(predictor, "predict", boom)
            r = c.post("/v1/depth", content=_png(), headers=PNG)
            assert r.status_code == 500 and r.json() == {"error": "internal error", "status": 500}
            monkeypatch.undo()
            metrics = c.get("/metrics").text
            for status in ("413", "415", "400", "500"):
                assert f'route="/v1/depth",status="{status}"' in metrics, status


def test_slow_and_idle_clients_are_cut_off(predictor):
    app = create_app(predictor, limits=Limits(read_timeout_s=1.0))
    with running(app, first_request_s=1.0, keep_alive_s=1.0, max_connections=8) as port:
        silent = socket.create_connection(("127.0.0.1", port))
        silent.settimeout(30)  # a timeout here raises: the server must close it first
        assert silent.recv(1) == b""  # closed by the server, not by us
        trickle = socket.create_connection(("127.0.0.1", port))
        trickle.settimeout(10)
        trickle.sendall(b"POST /v1/depth HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
        t0 = time.time()
        reply = b""
        while b"\r\n\r\n" not in reply:
            trickle.sendall(b"\0")
            time.sleep(0.2)
            try:
                trickle.setblocking(False)
                reply += trickle.recv(4096)
            except BlockingIOError:
                pass
            finally:
                trickle.setblocking(True)
            assert time.time() - t0 < 30, "the server never cut off a body trickling in for 30 s"
        assert reply.startswith(b"HTTP/1.1 408")
        crowd = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        time.sleep(0.3)
        closed = 0
        for s in crowd:
            s.settimeout(0.2)
            try:
                closed += s.recv(1) == b""
            except socket.timeout:
                pass
        assert closed >= 12  # beyond the cap of 8, new connections are closed at once
        for s in crowd + [silent, trickle]:
            s.close()
        time.sleep(1.5)  # the crowd's slots are free again
        # keep-alive slowloris: one request answered, then the next one's headers a line at a time
        slow = socket.create_connection(("127.0.0.1", port))
        slow.settimeout(5)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"status":"ok"' not in first:
            first += slow.recv(4096)
        t0 = time.time()
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed_after = None
        for i in range(20):
            try:
                slow.sendall(f"X-Slow-{i}: 1\r\n".encode())
            except OSError:  # reset: the server closed it
                closed_after = time.time() - t0
                break
            slow.setblocking(False)
            try:
                if slow.recv(1) == b"":
                    closed_after = time.time() - t0
                    break
            except BlockingIOError:
                pass
            finally:
                slow.setblocking(True)
            time.sleep(0.3)
        slow.close()
        assert closed_after is not None and closed_after < 3, closed_after  # the header deadline (1 s) applies again


def test_a_crowd_of_idle_connections_does_not_lock_anyone_out(predictor):
    """1000 connections that never send a byte (within the header deadline) against a cap of 64: each
    new client takes an idle connection's place, so every /healthz answers 200 (uvicorn's own
    limit_concurrency answered half of them with an uncounted plain-text 503); a client that is busy
    with a request keeps its connection."""
    app = create_app(predictor)
    with running(app, first_request_s=30.0, keep_alive_s=30.0, max_connections=64) as port:
        kept = socket.create_connection(("127.0.0.1", port))  # one request answered, then kept alive
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        kept.settimeout(5)
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        crowd = [socket.create_connection(("127.0.0.1", port)) for _ in range(1000)]
        try:
            time.sleep(0.5)
            statuses = []
            for _ in range(30):
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
                    statuses.append(c.get("/healthz").status_code)
            assert statuses == [200] * 30
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
                assert 'status="503"' not in c.get("/metrics").text
        finally:
            for s in crowd + [kept]:
                s.close()


def test_token_sources_and_bad_serve_options(tmp_path, monkeypatch):
    runner = CliRunner()
    f = tmp_path / "token"
    f.write_text("abc\n")
    assert read_token(None, f) == "abc"
    for args, text in [(["--token", ""], "empty"), (["--max-mb", "-1"], "--max-mb"),
                       (["--host", "0.0.0.0"], "without a token"), (["--token-file", str(tmp_path / "none")], "token file")]:
        r = runner.invoke(cli, ["serve", "-m", "fast-effb0-f64-128x416", *args])
        assert r.exit_code == 2 and text in r.output and "Traceback" not in r.output, (args, r.output)
    monkeypatch.setenv("FASTDPT_TOKEN", "")
    r = runner.invoke(cli, ["serve", "-m", "fast-effb0-f64-128x416"])
    assert r.exit_code == 2 and "empty" in r.output


def test_video_sessions_stabilise_over_http(predictor):
    from fastdpt.data.synthetic import make_scene, render

    scene = make_scene(np.random.default_rng(3), 4)
    frames = []
    for f in range(3):
        buf = io.BytesIO()
        Image.fromarray(render(scene, f, (96, 320))[0]).save(buf, "PNG")
        frames.append(buf.getvalue())
    with running(create_app(predictor)) as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=PNG, timeout=60) as c:
            car1, car2 = (c.post("/v1/sessions?stabilize=flow").json()["session"] for _ in range(2))
            assert car1 != car2 and len(car1) >= 24  # issued by the service, unguessable
            plain = [np.load(io.BytesIO(c.post("/v1/depth?format=npy", content=f).content)) for f in frames]
            stab = [np.load(io.BytesIO(c.post(f"/v1/depth?format=npy&stabilize=flow&session={car1}", content=f).content))
                    for f in frames]
            np.testing.assert_allclose(stab[0], plain[0], rtol=1e-5)  # the first frame of a session is as it is
            assert not np.allclose(stab[2], plain[2])  # later ones are blended with the past
            other = np.load(io.BytesIO(c.post(f"/v1/depth?format=npy&session={car2}", content=frames[2]).content))
            np.testing.assert_allclose(other, plain[2], rtol=1e-5)  # sessions do not share state
            assert c.delete(f"/v1/sessions/{car1}").status_code == 200
            assert c.delete(f"/v1/sessions/{car1}").status_code == 404
            r = c.post("/v1/depth?stabilize=flow", content=frames[0])
            assert r.status_code == 400 and "session" in r.json()["error"]
            r = c.post("/v1/depth?stabilize=flow&session=" + "x" * 100, content=frames[0])
            assert r.status_code == 400
            # a caller-chosen id is not a session: nobody can feed or end another client's video by guessing
            r = c.post("/v1/depth?stabilize=flow&session=car-1-of-someone-else", content=frames[0])
            assert r.status_code == 404 and "POST /v1/sessions" in r.json()["error"]
            assert c.delete("/v1/sessions/car-1-of-someone-else").status_code == 404
            r = c.post(f"/v1/depth?stabilize=scale&session={car2}", content=frames[0])
            assert r.status_code == 400 and "flow" in r.json()["error"]


def test_sessions_expire_on_a_timer_hold_bounded_memory_and_refuse_tiny_frames(predictor):
    from fastdpt.serve import Limits
    from fastdpt.stabilize import Stabilizer

    # what a session keeps is bounded whatever the frame size (97 MB a 5000x5000 session before)
    st = Stabilizer("flow", "metric", keep_pixels=10_000)
    rng = np.random.default_rng(0)
    for _ in range(2):
        frame = rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)
        out = st(frame, rng.uniform(1, 50, (600, 800)).astype(np.float32))
        assert out.shape == (600, 800) and np.isfinite(out).all()
        assert st.prev[2].size <= 10_000
    assert Stabilizer("scale", "metric")(frame, out).shape == (600, 800)
    tiny = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (10, 11, 3), dtype=np.uint8)).save(tiny, "PNG")
    app = create_app(predictor, limits=Limits(session_idle_s=0.3))
    with running(app) as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=PNG, timeout=60) as c:
            sid = c.post("/v1/sessions?stabilize=flow").json()["session"]
            for _ in range(2):  # two tiny frames in one session: a 500 with cv2.error before
                r = c.post(f"/v1/depth?session={sid}", content=tiny.getvalue())
                assert r.status_code == 400 and "too small" in r.json()["error"]
            c.post("/v1/sessions?stabilize=scale")
            assert len(app.state.sessions.items) == 2
            deadline = time.monotonic() + 10
            while app.state.sessions.items and time.monotonic() < deadline:  # no request comes: the timer expires them
                time.sleep(0.1)
            assert not app.state.sessions.items
            assert c.post(f"/v1/depth?session={sid}", content=tiny.getvalue()).status_code == 404



def test_the_uvicorn_internals_the_guarded_protocol_relies_on_are_there():
    """serve.py's protocol subclasses uvicorn's private H11Protocol (pyproject bounds uvicorn for it): the
    hooks it overrides, with the arguments it passes, and the attributes it reads must still be there; a
    uvicorn that renames any of them fails here by name before the functional tests fail by symptom."""
    import inspect

    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    hooks = {"connection_made": ["transport"], "data_received": ["data"], "on_response_complete": [],
             "connection_lost": ["exc"]}
    for name, args in hooks.items():
        assert list(inspect.signature(getattr(H11Protocol, name)).parameters)[1:] == args, name
    source = inspect.getsource(H11Protocol)
    for attribute in ("self.connections", "self.conn ", "self.loop", "self.cycle", "self.transport"):
        assert attribute in source, attribute
    assert hasattr(h11.Connection, "their_state") and hasattr(h11.Connection, "trailing_data")
