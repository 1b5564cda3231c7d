"""A bounded load test of `fastdpt serve`: good frames mixed with pixel bombs, /healthz probed throughout.

Starts a real server process on 127.0.0.1 (a fast preset with random weights saved as a checkpoint),
sends ``--requests`` POSTs from ``--clients`` threads, every ``--bomb-every``-th one a 1-bit PNG of a
few KB that declares just under the pixel limit (5000 x 5000), while one more thread GETs /healthz
every 50 ms. Stops by itself (request count, and ``--max-seconds``). Reports requests/s, p50/p99 latency
of the good requests, the worst /healthz latency, status counts, and the server's peak resident memory
against its idle memory (after a warm-up request).

    python benchmarks/serve_load.py --requests 60 --clients 4 --bomb-every 4 --json benchmarks/results/serve-load-cpu.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def frame_png(seed: int) -> bytes:
    from fastdpt.data.synthetic import sample_frames

    buf = io.BytesIO()
    Image.fromarray(sample_frames(1, seed=seed)[0]).save(buf, "PNG")
    return buf.getvalue()


def bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buf, "PNG")  # 25,000,000 pixels: exactly at the default limit
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fast-effb0-f64-128x416")
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--bomb-every", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--queue", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=300)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import httpx

    import fastdpt

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = fastdpt.save_checkpoint(fastdpt.create_model(args.model), Path(tmp) / "m.safetensors")
        port = free_port()
        cmd = [sys.executable, "-m", "fastdpt.cli", "serve", "-m", str(ckpt), "--port", str(port), "--threads",
               str(args.threads), "--workers", str(args.workers), "--queue", str(args.queue)]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "FASTDPT_TOKEN": "load-test-token"})
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": "Bearer load-test-token"}
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            good = [frame_png(s) for s in range(4)]
            bomb = bomb_png()
            r = httpx.post(f"{url}/v1/depth", content=good[0], headers={**auth, "Content-Type": "image/png"}, timeout=60)
            assert r.status_code == 200, r.text
            idle = rss_mb(server.pid)
            Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # reset the peak to now
            results: list[tuple[str, int, float]] = []
            health: list[float] = []
            stop = threading.Event()
            counter = {"next": 0}
            lock = threading.Lock()
            t_end = time.time() + args.max_seconds

            def client():
                with httpx.Client(base_url=url, headers=auth, timeout=120) as c:
                    while time.time() < t_end:
                        with lock:
                            i = counter["next"]
                            counter["next"] += 1
                        if i >= args.requests:
                            return
                        kind = "bomb" if args.bomb_every and i % args.bomb_every == args.bomb_every - 1 else "good"
                        body = bomb if kind == "bomb" else good[i % len(good)]
                        t0 = time.perf_counter()
                        try:
                            code = c.post("/v1/depth", content=body, headers={"Content-Type": "image/png"}).status_code
                        except httpx.HTTPError:
                            code = -1
                        results.append((kind, code, time.perf_counter() - t0))

            def prober():
                with httpx.Client(base_url=url, timeout=10) as c:
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        c.get("/healthz")
                        health.append(time.perf_counter() - t0)
                        time.sleep(0.05)

            probe = threading.Thread(target=prober)
            probe.start()
            t0 = time.perf_counter()
            clients = [threading.Thread(target=client) for _ in range(args.clients)]
            for t in clients:
                t.start()
            for t in clients:
                t.join()
            wall = time.perf_counter() - t0
            stop.set()
            probe.join()
            peak = rss_mb(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait(timeout=30)
    ok = [lat for kind, code, lat in results if kind == "good" and code == 200]
    row = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "model": args.model, "requests": len(results),
        "clients": args.clients, "bomb_every": args.bomb_every, "workers": args.workers, "queue": args.queue,
        "threads": args.threads, "wall_s": round(wall, 2), "requests_per_s": round(len(results) / wall, 2),
        "status": {f"{k}:{c}": n for (k, c), n in sorted(Counter((k, c) for k, c, _ in results).items())},
        "good_latency_ms_p50": round(float(np.percentile(ok, 50)) * 1000, 1) if ok else None,
        "good_latency_ms_p99": round(float(np.percentile(ok, 99)) * 1000, 1) if ok else None,
        "healthz_ms_worst": round(max(health) * 1000, 1), "healthz_ms_p50": round(float(np.median(health)) * 1000, 1),
        "healthz_probes": len(health), "idle_rss_mb": round(idle, 1), "peak_rss_mb": round(peak, 1),
        "peak_over_idle": round(peak / idle, 3),
    }
    print(json.dumps(row, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
