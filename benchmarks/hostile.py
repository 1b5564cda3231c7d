"""Issue 17's hostile-tester and first-use probes, re-run in one go against real processes.

Three groups (``--only cli,serve,ray``), all on files made here and a tiny random-weight checkpoint:

- ``cli``: the real ``fastdpt`` command in a fresh process; checks what a user sees (exit code, one
  line and no traceback, what was written).
- ``serve``: a real ``fastdpt serve`` process on 127.0.0.1 with its defaults and a token, attacked as
  the issue's hostile client did (keep-alive slowloris, trickled uploads, 1000 idle connections,
  stabilised sessions fed pixel bombs, tiny frames, guessed session ids); figures are the server's
  answers and resident memory.
- ``ray``: ``study run`` against an address nobody listens on, and without ``--address`` beside
  another Ray head started with Ray's default temp folder (whose ``ray_current_cluster`` file a
  careless ``ray.init()`` would join).

    python benchmarks/hostile.py [--only cli,serve,ray] [--json benchmarks/results/hostile.json]

Every probe prints ``ok`` or ``FAIL`` and its figures; the exit code is the number of failures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from serve_load import free_port, rss_mb  # this folder's server load test: the same port and memory probes

TOKEN = "hostile-probe-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def fastdpt_cmd(args: list[str], cwd: Path, shell: str | None = None, timeout: float = 900) -> dict:
    """Run ``python -m fastdpt.cli ARGS`` (or a shell line) in a fresh process; what a user sees."""
    t0 = time.perf_counter()
    env = {**os.environ, "COLUMNS": "100"}
    if shell:
        p = subprocess.run(shell, shell=True, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
    else:
        p = subprocess.run([sys.executable, "-m", "fastdpt.cli", *args], capture_output=True, text=True, cwd=cwd,
                           timeout=timeout, env=env)
    text = (p.stdout + p.stderr).strip()
    lines = text.splitlines()
    said = [ln.strip(" │╭╮╰╯─") for ln in lines if "error" in ln.lower() or "invalid value" in ln.lower()]
    return {"rc": p.returncode, "s": round(time.perf_counter() - t0, 2), "lines": len(lines),
            "traceback": "Traceback" in text, "last": (said or lines or [""])[-1][:160]}


def one_line(r: dict) -> bool:
    """One line of error and no traceback; a usage error is click's usual form (the usage, a hint, and the
    one message in a box: five lines)."""
    usage = r["rc"] == 2 and r["last"].startswith("Invalid value") and r["lines"] <= 5
    return (r["lines"] <= 2 or usage) and not r["traceback"]


class Probes:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def __call__(self, item: str, what: str, result: dict, ok: bool) -> None:
        self.rows.append({"item": item, "probe": what, "ok": bool(ok), **result})
        figures = ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("last", "traceback"))
        last = f" | {result['last']}" if result.get("last") else ""
        print(f"{'ok  ' if ok else 'FAIL'} {item:>5} {what}: {figures}{last}", flush=True)


def png(array: np.ndarray | None = None, mode: str = "RGB", size: tuple[int, int] = (0, 0)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    (Image.fromarray(array) if array is not None else Image.new(mode, size)).save(buf, "PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- cli


def cli_probes(w: Path, ckpt: Path, frames: Path, tiny, probe: Probes) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from fastdpt.config import CONFIG_KEY

    (w / "notes.txt").write_text("a text file, not a video\n" * 200)
    r = fastdpt_cmd(["video", "notes.txt", "-m", str(ckpt), "-o", "v.mp4"], w)
    probe("5", "a text file given as a video", r, r["rc"] == 2 and one_line(r) and not (w / "v.mp4").exists())
    for t in ("-1", "0"):
        r = fastdpt_cmd(["predict", str(frames), "-m", str(ckpt), "-o", "o", "--threads", t], w)
        probe("7", f"--threads {t}", r, r["rc"] == 2 and one_line(r) and not (w / "o").exists())
    with safe_open(str(ckpt), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for label, name in (("@8192x8192", tiny.name.replace("@64x96", "@8192x8192")),
                        ("f100000", tiny.name.replace(".f32.", ".f100000.")),
                        ("heads1 (same tensors)", tiny.name.replace("heads12", "heads1")),
                        ("@128x96 (same tensors)", tiny.name.replace("@64x96", "@128x96")),
                        ("another metric head", tiny.name.replace("m0.01_0.0125", "m0.02_0.0125"))):
        path = w / f"edited-{len(probe.rows)}.safetensors"
        save_file(tensors, str(path), metadata={**meta, CONFIG_KEY: name})
        out = f"o{len(probe.rows)}"
        r = fastdpt_cmd(["predict", str(frames), "-m", str(path), "-o", out], w)
        probe("14/18", f"predict, checkpoint metadata edited to {label}", r,
              r["rc"] == 2 and one_line(r) and not (w / out).exists())
    r = fastdpt_cmd(["camera", "--index", "-1", "-m", str(ckpt)], w)
    probe("17", "camera --index -1", r, r["rc"] == 2 and one_line(r))
    r = fastdpt_cmd([], w, shell=f"{sys.executable} -m fastdpt.cli predict {frames} -m {ckpt} -o piped -f npy | head -1")
    written = len(list((w / "piped").rglob("*.npy"))) if (w / "piped").is_dir() else 0
    probe("17", "predict a folder of 6 | head -1 (stdout closed)", {**r, "written": written}, written == 6)
    grid = w / "huge.yaml"
    grid.write_text("backbone: [r50, effb0]\nhooks: [" + ", ".join(f"[0, {k}]" for k in range(1, 12)) + "]\n"
                    "heads: [1, 2, 3, 4, 6, 12, 24]\nattention: [softmax, performer]\nfeatures: [32, 64, 128, 256]\n"
                    "input_size: [[64, 192], [128, 416], [192, 640], [352, 1216]]\n")
    r = fastdpt_cmd(["study", "run", str(grid), "--out", "s", "--data-root", "nowhere"], w)
    probe("16", "a grid of 4928 trials", r, r["rc"] == 2 and one_line(r) and not (w / "s").exists())
    for label, text in (("epochs: -5", "  epochs: -5\n"), ("lr: -1", "  lr: -1\n")):
        bad = w / "bad.yaml"
        bad.write_text("backbone: [effb0]\ninput_size: [[64, 192]]\ntrain:\n" + text)
        r = fastdpt_cmd(["study", "run", str(bad), "--out", "s2", "--data-root", "nowhere"], w)
        probe("16", f"{label} in a grid", r, r["rc"] == 2 and one_line(r) and not (w / "s2").exists())
    r = fastdpt_cmd(["stream", str(frames), "-m", str(ckpt), "-o", "v.mp4"], w)
    mode = (w / "v.mp4").stat().st_mode & 0o777 if (w / "v.mp4").is_file() else 0
    umask = os.umask(0)
    os.umask(umask)
    probe("12", "a video's file mode is an image's (0o666 & ~umask)", {**r, "mode": oct(mode)},
          r["rc"] == 0 and mode == 0o666 & ~umask)
    r = fastdpt_cmd(["--help"], w)
    probe("10", "fastdpt --help", r, r["rc"] == 0)
    r = fastdpt_cmd(["predict", "nowhere.png", "-m", str(ckpt), "--threads", "0"], w)
    probe("10", "a usage error (--threads 0)", r, r["rc"] == 2 and one_line(r))


# --------------------------------------------------------------------------------------------- serve


class Server:
    """``fastdpt serve`` in its own process on a free port, with a token and its default limits."""

    def __init__(self, ckpt: Path, cwd: Path, threads: int = 1) -> None:
        self.port = free_port()
        self.log = open(cwd / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "fastdpt.cli", "serve", "-m", str(ckpt), "--port",
                                      str(self.port), "--token", TOKEN, "--threads", str(threads)],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url("/healthz"), timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {(cwd / self.log.name).read_text()[-2000:]}")
            time.sleep(0.3)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def healthz_prober(port: int, stop: threading.Event, statuses: list) -> threading.Thread:
    """GET /healthz on a fresh connection every 0.5 s until ``stop``; statuses (or the error's name)."""
    import httpx

    def loop():
        while not stop.is_set():
            try:
                statuses.append(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code)
            except httpx.HTTPError as e:
                statuses.append(type(e).__name__)
            stop.wait(0.5)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def answered(s: socket.socket) -> bytes | None:
    """What the server sent on ``s`` so far (b"" once it closed it), None if nothing yet."""
    s.setblocking(False)
    try:
        return s.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""
    finally:
        s.setblocking(True)


def share(statuses: list, value=200) -> str:
    return f"{sum(x == value for x in statuses)}/{len(statuses)}"


def serve_probes(w: Path, ckpt: Path, frames: Path, probe: Probes, seconds: float) -> None:
    import httpx

    srv = Server(ckpt, w)
    try:
        port, started = srv.port, round(rss_mb(srv.proc.pid), 1)
        # 13a: keep-alive slowloris: 64 connections get one /healthz answer, then trickle the next request's
        # headers a line a second (0 of 63 were closed in 60 s, /healthz 503 to 93 % of probes, before)
        conns = []
        for _ in range(64):
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while b'"ok"' not in got:
                part = s.recv(4096)
                if not part:
                    break
                got += part
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            conns.append(s)
        stop, statuses = threading.Event(), []
        prober = healthz_prober(port, stop, statuses)
        t0, closed_at = time.monotonic(), {}
        while time.monotonic() - t0 < seconds and len(closed_at) < len(conns):
            for i, s in enumerate(conns):
                if i in closed_at:
                    continue
                try:
                    s.sendall(f"X-Slow-{int(time.monotonic() - t0)}: 1\r\n".encode())
                    gone = answered(s) == b""
                except OSError:
                    gone = True
                if gone:
                    closed_at[i] = time.monotonic() - t0
            time.sleep(1.0)
        stop.set()
        prober.join()
        for s in conns:
            s.close()
        probe("13", "64 keep-alive slowloris connections (a header line a second)",
              {"closed": f"{len(closed_at)}/64", "closed_within_s": round(max(closed_at.values(), default=0), 1),
               "healthz_200": share(statuses), "rss_started_mb": started},
              len(closed_at) == 64 and all(x == 200 for x in statuses))

        # 13b: 9 authenticated uploads trickling a byte every 3 s, while a client posts good frames
        frame = png(cv2.cvtColor(cv2.imread(str(next(frames.iterdir()))), cv2.COLOR_BGR2RGB))
        trickles = []
        for _ in range(9):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"POST /v1/depth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                      "Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n".encode())
            trickles.append(s)
        good, lat, t0, cut, how = [], [], time.monotonic(), {}, set()
        with httpx.Client(base_url=srv.url(""), headers={**AUTH, "Content-Type": "image/png"}, timeout=60) as c:
            last_byte = 0.0
            while time.monotonic() - t0 < 40 and len(cut) < 9:
                if time.monotonic() - last_byte >= 3:
                    last_byte = time.monotonic()
                    for i, s in enumerate(trickles):
                        if i not in cut:
                            try:
                                s.sendall(b"\0")
                            except OSError:
                                cut[i] = time.monotonic() - t0
                for i, s in enumerate(trickles):
                    got = answered(s) if i not in cut else None
                    if got is not None:
                        cut[i] = time.monotonic() - t0
                        how.add(got[:12].decode(errors="replace") or "closed")
                t1 = time.perf_counter()
                good.append(c.post("/v1/depth", content=frame).status_code)
                lat.append(time.perf_counter() - t1)
                time.sleep(0.2)
        for s in trickles:
            s.close()
        probe("13", "9 authenticated uploads trickling a byte every 3 s, good frames posted meanwhile",
              {"good_200": share(good), "good_p50_ms": round(1000 * float(np.median(lat)), 1),
               "trickles_cut": f"{len(cut)}/9", "cut_after_s": round(max(cut.values(), default=0), 1),
               "answer": sorted(how)},
              all(x == 200 for x in good) and len(cut) == 9)

        # 13c: 1000 connections that never send a byte (the cap is 64)
        crowd = [socket.create_connection(("127.0.0.1", port)) for _ in range(1000)]
        time.sleep(0.5)
        statuses = []
        for _ in range(30):
            try:
                statuses.append(httpx.get(srv.url("/healthz"), timeout=5).status_code)
            except httpx.HTTPError as e:
                statuses.append(type(e).__name__)
        for s in crowd:
            s.close()
        metrics = httpx.get(srv.url("/metrics"), headers=AUTH, timeout=5).text
        probe("13", "1000 idle connections, then 30 /healthz", {"healthz_200": share(statuses),
                                                               "uncounted_503": 'status="503"' not in metrics},
              all(x == 200 for x in statuses))

        # 15: 50 stabilised sessions fed a 5000x5000 PNG of a few KB each (3.99 GB held before)
        bomb = png(mode="L", size=(5000, 5000))
        idle = round(rss_mb(srv.proc.pid), 1)
        statuses, t0 = [], time.perf_counter()
        with httpx.Client(base_url=srv.url(""), headers={**AUTH, "Content-Type": "image/png"}, timeout=120) as c:
            for _ in range(50):
                sid = c.post("/v1/sessions?stabilize=flow").json()["session"]
                statuses.append(c.post(f"/v1/depth?format=npy&session={sid}", content=bomb).status_code)
            held = round(rss_mb(srv.proc.pid), 1)
            probe("15", f"50 flow sessions fed a {len(bomb)}-byte 5000x5000 PNG each",
                  {"status_200": share(statuses), "rss_idle_mb": idle, "rss_after_mb": held,
                   "mb_per_session": round((held - idle) / 50, 1), "s": round(time.perf_counter() - t0, 1)},
                  all(x == 200 for x in statuses) and (held - idle) / 50 < 40)
            tiny_png = png(np.random.default_rng(0).integers(0, 255, (10, 11, 3), dtype=np.uint8))
            sid = c.post("/v1/sessions?stabilize=flow").json()["session"]
            replies = [c.post(f"/v1/depth?session={sid}", content=tiny_png) for _ in range(2)]
            probe("15", "two 11x10 frames in one session", {"statuses": [r.status_code for r in replies],
                                                            "last": replies[-1].json().get("error", "")},
                  all(r.status_code == 400 for r in replies))
            codes = []
            for guess in ("car-1", sid[:-1] + ("A" if sid[-1] != "A" else "B")):  # a name, and an issued-looking id
                codes += [c.post(f"/v1/depth?session={guess}", content=frame).status_code,
                          c.delete(f"/v1/sessions/{guess}").status_code]
            probe("15", "guessed session ids: a name, an issued-looking id (feed, delete)",
                  {"statuses": codes, "issued_id_chars": len(sid)},
                  all(400 <= x < 500 for x in codes) and codes[2:] == [404, 404] and len(sid) >= 24)
    finally:
        srv.close()

    # 14: serve with checkpoint metadata declaring a huge input (SIGSEGV at 8.6 GB on the first request before)
    from safetensors import safe_open
    from safetensors.torch import save_file

    from fastdpt.config import CONFIG_KEY

    with safe_open(str(ckpt), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    path = w / "huge-serve.safetensors"
    save_file(tensors, str(path), metadata={**meta, CONFIG_KEY: meta[CONFIG_KEY].replace("@64x96", "@8192x8192")})
    r = fastdpt_cmd(["serve", "-m", str(path), "--port", str(free_port())], w, timeout=120)
    probe("14", "serve a checkpoint whose metadata names @8192x8192", r, r["rc"] == 2 and one_line(r))
    # 14: an ONNX file whose metadata names another input size fails at load, for predict
    import onnx

    r = fastdpt_cmd(["export", str(ckpt), "-o", "m.onnx"], w)
    proto = onnx.load(str(w / "m.onnx"))
    entry = next(p for p in proto.metadata_props if p.key == CONFIG_KEY)
    entry.value = entry.value.replace("@64x96", "@128x96")
    onnx.save(proto, str(w / "edited.onnx"))
    r = fastdpt_cmd(["predict", str(frames), "-m", "edited.onnx", "-o", "onnx-out", "--backend", "onnxruntime"], w)
    probe("14", "an ONNX file whose metadata names another input size", r,
          r["rc"] == 2 and one_line(r) and not (w / "onnx-out").exists())


# ----------------------------------------------------------------------------------------------- ray


def ray_head(cpus: int, temp: str | None):
    """``ray start --head --block`` on 127.0.0.1 in its own process group (None: Ray's default temp folder,
    so it writes the ``ray_current_cluster`` file); returns (process, address)."""
    port = free_port()
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    cmd = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus",
           str(cpus), "--include-dashboard", "false", "--disable-usage-stats"] + (["--temp-dir", temp] if temp else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    deadline = time.monotonic() + 180
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("ray start failed")
        time.sleep(0.5)
    time.sleep(3.0)
    return proc, f"127.0.0.1:{port}"


def stop_head(proc) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def drivers_seen(address: str) -> int:
    """How many drivers (jobs) the head at ``address`` has had, not counting this check itself."""
    code = ("from fastdpt.cluster import ray_session\nwith ray_session(%r, verbose=0) as ray: "
            "print(len(ray._private.state.jobs()) - 1)" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip().splitlines()[-1])


def ray_probes(w: Path, probe: Probes) -> None:
    from fastdpt.data.synthetic import synth

    data = w / "synth"
    synth(data, drives=3, frames=14, size=(64, 192), seed=4, workers=1)
    name = "r50.h0-1.heads12.softmax.f32.m0.01_0.0125@64x192"
    quick = ["--data-root", str(data), "--epochs", "1", "--max-steps", "2", "--baseline", "none",
             "--timing-rounds", "0", "--bench-runs", "1"]
    r = fastdpt_cmd(["study", "run", name, "--out", "unreachable", "--address", f"127.0.0.1:{free_port()}", *quick], w)
    probe("2", "study run --address of a port nobody listens on", r,
          r["rc"] == 2 and one_line(r) and not (w / "unreachable").exists())
    proc, address = ray_head(1, None)  # Ray's default temp folder: it writes ray_current_cluster
    try:
        before = drivers_seen(address)  # each look adds one driver: its own
        r = fastdpt_cmd(["study", "run", name, "--out", "local", *quick], w)
        joined = drivers_seen(address) - before - 1
        probe("16", "study run without --address beside another Ray head", {**r, "joined_that_head": joined,
                                                                          "head_alive": proc.poll() is None},
              r["rc"] == 0 and joined == 0 and proc.poll() is None)
        r = fastdpt_cmd(["study", "run", name, "--out", "too-big", "--address", address, "--resources", "cpu=2", *quick], w)
        probe("2", "study run --resources cpu=2 on a 1-CPU cluster", r,
              r["rc"] == 2 and one_line(r) and not (w / "too-big" / "study.json").exists())
        seen = drivers_seen(address)
        r = fastdpt_cmd(["study", "run", name, "--out", "remote", "--address", address, *quick], w, timeout=600)
        joined = drivers_seen(address) - seen - 1
        probe("2", "study run --address 127.0.0.1:PORT of that head (default resources)", {**r, "joined_that_head": joined},
              r["rc"] == 0 and joined == 1)
    finally:
        stop_head(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="cli,serve,ray")
    ap.add_argument("--slowloris-s", type=float, default=60.0, help="how long the slowloris connections trickle")
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch

    import fastdpt
    from fastdpt.config import ModelConfig
    from fastdpt.weights import save_checkpoint

    torch.set_num_threads(2)
    probe = Probes()
    with tempfile.TemporaryDirectory() as d:
        w = Path(d)
        tiny = ModelConfig(hooks=(0, 1), heads=12, features=32, input_size=(64, 96), metric=(0.01, 0.0125))
        ckpt = save_checkpoint(fastdpt.create_model(tiny), w / "m.safetensors")
        frames = w / "frames"
        frames.mkdir()
        rng = np.random.default_rng(0)
        for i in range(6):
            cv2.imwrite(str(frames / f"{i:03d}.png"), rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
        groups = a.only.split(",")
        if "cli" in groups:
            cli_probes(w, ckpt, frames, tiny, probe)
        if "serve" in groups:
            serve_probes(w, ckpt, frames, probe, a.slowloris_s)
        if "ray" in groups:
            ray_probes(w, probe)
    failed = [r for r in probe.rows if not r["ok"]]
    print(f"{len(probe.rows) - len(failed)} of {len(probe.rows)} probes as expected")
    if a.json:
        import platform

        Path(a.json).write_text(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                                            "cpu": platform.processor() or platform.machine(), "probes": probe.rows},
                                           indent=1))
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
