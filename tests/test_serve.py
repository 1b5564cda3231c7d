import io
import os
from contextlib import contextmanager
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402

import fastdpt  # noqa: E402
from conftest import TINY, running  # noqa: E402
from fastdpt.predict import Predictor  # noqa: E402
from fastdpt.serve import create_app  # noqa: E402

METRIC = TINY.replace(metric=(0.01, 0.0125))


@contextmanager
def running_url(app):
    """The server on 127.0.0.1; yields its base URL."""
    with running(app) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server():
    """The server with a token and a small upload limit."""
    predictor = Predictor(fastdpt.create_model(METRIC).eval())
    with running_url(create_app(predictor, token="s3cret", max_bytes=200_000, max_pixels=400_000)) as url:
        yield url, predictor


def _png(h=48, w=80, seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


AUTH = {"Authorization": "Bearer s3cret"}


def test_depth_in_every_format(server):
    url, predictor = server
    data = _png()
    ref = predictor.predict(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))).depth
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        r = c.post("/v1/depth?format=npy", content=data, headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.headers["x-depth-kind"] == "metric"
        np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), ref)
        r = c.post("/v1/depth?format=png16", files={"image": ("a.png", data, "image/png")})
        u16 = np.asarray(Image.open(io.BytesIO(r.content)))
        np.testing.assert_allclose(u16 / 256.0, ref, atol=0.5 / 256 + 1e-6)
        r = c.post("/v1/depth?format=color", content=data, headers={"Content-Type": "image/png"})
        assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (48, 80, 3)
        j = c.post("/v1/depth", files={"image": ("a.png", data, "image/png")}).json()
        assert j["shape"] == [48, 80] and j["kind"] == "metric" and j["unit"] == "m"
        assert j["min"] == pytest.approx(float(ref.min())) and j["mean"] == pytest.approx(float(ref.mean()), rel=1e-5)
        assert c.get("/healthz").json()["model"] == METRIC.name
        assert c.get("/v1/models").json()["loaded"] == METRIC.name
        metrics = c.get("/metrics").text
        assert 'fastdpt_requests_total{route="/v1/depth",status="200"} 4.0' in metrics
        assert "fastdpt_inference_seconds_count 4.0" in metrics


def test_errors(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/depth", content=_png(), headers={"Content-Type": "image/png"})
        assert r.status_code == 401 and r.json()["error"].startswith("missing or wrong")
        r = c.post("/v1/depth", content=_png(), headers={"Content-Type": "image/png", "Authorization": "Bearer nope"})
        assert r.status_code == 401
        c.headers.update(AUTH)
        r = c.post("/v1/depth", content=b"\x89PNG\r\n\x1a\ncorrupt", headers={"Content-Type": "image/png"})
        assert r.status_code == 400 and "cannot decode" in r.json()["error"]
        r = c.post("/v1/depth", content=os.urandom(300_000), headers={"Content-Type": "image/png"})
        assert r.status_code == 413
        flat = io.BytesIO()
        Image.new("RGB", (700, 700), (90, 90, 90)).save(flat, "PNG")  # a few KB, but 490,000 pixels
        r = c.post("/v1/depth", content=flat.getvalue(), headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and "pixels" in r.json()["error"]
        r = c.post("/v1/depth", content=b"{}", headers={"Content-Type": "application/json"})
        assert r.status_code == 415
        r = c.post("/v1/depth?format=tiff", content=_png(), headers={"Content-Type": "image/png"})
        assert r.status_code == 400
        r = c.post("/v1/depth", files={"other": ("a.png", _png(), "image/png")})
        assert r.status_code == 400 and "'image'" in r.json()["error"]
        assert c.get("/nowhere").status_code == 404


def test_concurrent_requests_match_sequential(server):
    url, _ = server
    bodies = [_png(seed=i) for i in range(4)]
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as c:
        seq = [c.post("/v1/depth?format=npy", content=b, headers={"Content-Type": "image/png"}).content for b in bodies]
    results = {}

    def hit(i):
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as c:
            results[i] = c.post("/v1/depth?format=npy", content=bodies[i], headers={"Content-Type": "image/png"}).content

    ts = [threading.Thread(target=hit, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert all(results[i] == seq[i] for i in range(4))


def _browser():
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chrome and driver):
        if os.environ.get("FASTDPT_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium and chromedriver are required (FASTDPT_REQUIRE_BROWSER=1)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_web_page_in_headless_chromium(tmp_path):
    pytest.importorskip("selenium")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    predictor = Predictor(fastdpt.create_model(METRIC).eval())
    img = tmp_path / "upload.png"
    img.write_bytes(_png(60, 100, seed=5))
    ref = predictor.predict(np.asarray(Image.open(img).convert("RGB"))).depth
    with running_url(create_app(predictor)) as url:
        driver = _browser()
        try:
            driver.set_window_size(1400, 900)
            driver.get(f"{url}/")
            WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "model").text == METRIC.name)
            driver.find_element(By.ID, "file").send_keys(str(img))
            WebDriverWait(driver, 60).until(
                lambda d: (d.find_element(By.ID, "depth").get_attribute("src") or "").startswith("data:image/png"))
            depth_img = driver.find_element(By.ID, "depth")
            WebDriverWait(driver, 30).until(lambda d: d.execute_script("return arguments[0].naturalWidth", depth_img) == 100)
            ActionChains(driver).move_to_element(depth_img).click().perform()  # centre of the depth image
            text = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "readout").text)
            coords, value = text.split(":")
            x, y = (int(part.split("=")[1]) for part in coords.split())
            assert abs(x - 50) <= 2 and abs(y - 30) <= 2
            assert float(value.split()[0]) == pytest.approx(float(ref[y, x]), abs=1e-3)
            assert "60, metric" in driver.find_element(By.ID, "status").text or "100x60" in driver.find_element(By.ID, "status").text
        finally:
            driver.quit()


def test_the_service_is_a_class_a_reader_can_use_without_http():
    # the service's work (decode -> infer -> stabilise -> encode, sessions, metric labels) is one class;
    # create_app only wires HTTP around it, and the session modes come from the stabiliser's own list
    import time

    from fastdpt.serve import ApiError, DepthService, Limits
    from fastdpt.stabilize import MODES, Stabilizer

    predictor = Predictor(fastdpt.create_model(METRIC).eval())
    service = DepthService(predictor, "tok", Limits(max_pixels=400_000))
    data = _png(seed=3)
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    body, media, kind = service.work(data, "npy", False, False, time.perf_counter())
    assert media == "application/octet-stream" and kind == "metric"
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), predictor.predict(image).depth)
    for mode in MODES:
        if mode == "none":
            with pytest.raises(ApiError) as e:
                service.start_session(mode)
            assert e.value.status == 400 and all(m in e.value.message for m in MODES if m != "none")
            continue
        sid = service.start_session(mode)["session"]
        stream = service.session_for(mode, sid)
        ref = Stabilizer(mode, "metric")
        for seed in (3, 4):
            frame = _png(seed=seed)
            img = np.asarray(Image.open(io.BytesIO(frame)).convert("RGB"))
            body, _, _ = service.work(frame, "npy", False, False, time.perf_counter(), stream)
            np.testing.assert_allclose(np.load(io.BytesIO(body)), ref(img, predictor.predict(img).depth), rtol=1e-5)
        assert service.end_session(sid) == {"ended": sid}
    with pytest.raises(ApiError) as e:
        service.work(b"not an image", "json", False, False, time.perf_counter())
    assert e.value.status == 400
    assert [service.route(p) for p in ("/v1/sessions/abc", "/v1/depth", "/../etc/passwd")] == \
        ["/v1/sessions", "/v1/depth", "other"]
