"""Shared fixtures: tiny configs, and a synthetic checkpoint with exactly the official DPT-Hybrid
keys and shapes (written from the key table of REFERENCE.md section 2, not from fastdpt's mapping)."""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from fastdpt.config import ModelConfig

# the split lists live in ../shared beside the checkout (and beside CI's clone); never in the repo
SPLITS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti_splits"
# tests that read them skip, saying where they looked, in a clone with no shared/ beside it
needs_splits = pytest.mark.skipif(not (SPLITS_DIR / "SHA256SUMS").is_file(),
                                  reason=f"the KITTI split lists are not at {SPLITS_DIR} (shared/data/kitti_splits "
                                         "beside the checkout); see docs/tests.md")

TINY = ModelConfig(hooks=(0, 1), heads=12, features=32, input_size=(64, 96))
TINY_EFF = ModelConfig(backbone="effb0", hooks=(0, 1), heads=4, features=32, input_size=(64, 96),
                       metric=(0.00006016, 0.00579))


# the README's test command runs the tests on two pytest-xdist workers, a test file to a worker, the files in
# the order below (pyproject's addopts: ``-n 2 --dist loadfile --no-loadscope-reorder``); each worker gets its
# share of the cores, so the two never oversubscribe them. (Not --dist loadgroup: with pytest 9 xdist 3.8 no
# longer puts a group's tests on one worker.)
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
# the test files that take longest (minutes each on 2 cores; pytest prints the slowest tests), run first
# so that the two workers finish together instead of one waiting for a long file started last
LONGEST_FIRST = ("test_compress", "test_study", "test_training", "test_distill", "test_demo", "test_runtime",
                 "test_outputs_runtime", "test_runs_safety")


def pytest_collection_modifyitems(config, items):
    """The longest test files first (each file stays in one piece: ``--dist loadfile`` gives a file to one
    worker); the rest in their usual order."""
    def rank(item):
        name = item.module.__name__.rsplit(".", 1)[-1]
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a file is kept


@pytest.fixture(autouse=True)
def _one_ray_at_a_time(request, tmp_path_factory):
    """Tests marked ``ray`` start a Ray instance: one at a time across the workers (a file lock in the
    run's shared temporary folder), so two never compete for Ray's default ports."""
    if request.node.get_closest_marker("ray") is None or WORKERS == 1:
        yield
        return
    import fcntl

    with open(tmp_path_factory.getbasetemp().parent / "ray.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(autouse=True)
def _threads(monkeypatch):
    torch.set_num_threads(THREADS)
    # commands a test starts in a subprocess take the worker's share too
    monkeypatch.setenv("OMP_NUM_THREADS", str(THREADS))
    torch.manual_seed(0)
    # commands default to --backend auto (OpenVINO / ONNX Runtime convert the model per input size: seconds);
    # tests compare against torch unless they ask for another backend (tests/test_runtime.py does)
    monkeypatch.setenv("FASTDPT_BACKEND", "torch")
    monkeypatch.setenv("FASTDPT_PRECISION", "fp32")


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """368 tensors, 123,146,985 values, float32, in the official key layout.

    Values are scaled so that a forward pass stays in a sensible range: conv weights behind
    weight standardisation are unit Gaussians, other weights ~ 1/sqrt(fan_in), norms ~ 1.
    """
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def rnd(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    def lin(key, out, inp, k=1, std_w=None):
        shape = (out, inp, k, k) if k else (out, inp)
        fan_in = inp * (k * k if k else 1)
        sd[key + ".weight"] = rnd(*shape, std=std_w or 1 / math.sqrt(fan_in))
        sd[key + ".bias"] = rnd(out, std=0.02)

    def norm(key, n):
        sd[key + ".weight"] = rnd(n, std=0.1, mean=1.0)
        sd[key + ".bias"] = rnd(n, std=0.1)

    p = "pretrained.model."
    sd[p + "cls_token"] = rnd(1, 1, 768, std=0.02)
    sd[p + "pos_embed"] = rnd(1, 577, 768, std=0.02)
    b = p + "patch_embed.backbone."
    sd[b + "stem.conv.weight"] = rnd(64, 3, 7, 7)
    norm(b + "stem.norm", 64)
    cin = 64
    for s, (nblocks, out) in enumerate([(3, 256), (4, 512), (9, 1024)]):
        mid = out // 4
        for i in range(nblocks):
            k = f"{b}stages.{s}.blocks.{i}."
            inp = cin if i == 0 else out
            if i == 0:
                sd[k + "downsample.conv.weight"] = rnd(out, inp, 1, 1)
                norm(k + "downsample.norm", out)
            sd[k + "conv1.weight"] = rnd(mid, inp, 1, 1)
            sd[k + "conv2.weight"] = rnd(mid, mid, 3, 3)
            sd[k + "conv3.weight"] = rnd(out, mid, 1, 1)
            norm(k + "norm1", mid)
            norm(k + "norm2", mid)
            # the residual branch's last norm starts small, as trained ResNets do
            sd[k + "norm3.weight"] = rnd(out, std=0.05, mean=0.2)
            sd[k + "norm3.bias"] = rnd(out, std=0.05)
        cin = out
    lin(p + "patch_embed.proj", 768, 1024, 1)
    for i in range(12):
        k = f"{p}blocks.{i}."
        norm(k + "norm1", 768)
        norm(k + "norm2", 768)
        lin(k + "attn.qkv", 2304, 768, 0)
        lin(k + "attn.proj", 768, 768, 0, std_w=0.3 / math.sqrt(768))
        lin(k + "mlp.fc1", 3072, 768, 0)
        lin(k + "mlp.fc2", 768, 3072, 0, std_w=0.3 / math.sqrt(3072))
    norm(p + "norm", 768)
    lin(p + "head", 1000, 768, 0)
    for h in (3, 4):
        lin(f"pretrained.act_postprocess{h}.0.project.0", 768, 1536, 0)
        lin(f"pretrained.act_postprocess{h}.3", 768, 768, 1)
    lin("pretrained.act_postprocess4.4", 768, 768, 3)
    for i, c in enumerate([256, 512, 768, 768], 1):
        sd[f"scratch.layer{i}_rn.weight"] = rnd(256, c, 3, 3, std=1 / math.sqrt(9 * c))
    for r in range(1, 5):
        lin(f"scratch.refinenet{r}.out_conv", 256, 256, 1)
        for u in (1, 2):
            for c in (1, 2):
                lin(f"scratch.refinenet{r}.resConfUnit{u}.conv{c}", 256, 256, 3, std_w=0.3 / math.sqrt(9 * 256))
    lin("scratch.output_conv.0", 128, 256, 3)
    lin("scratch.output_conv.2", 32, 128, 3)
    lin("scratch.output_conv.4", 1, 32, 1)
    sd["scratch.output_conv.4.bias"] = torch.tensor([1.0])  # keep the non-negative head mostly active
    return sd


def official_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights in Hugging Face transformers' naming (REFERENCE.md section 3)."""
    import re

    out = {}
    for k, v in sd.items():
        if k.startswith("pretrained.model.head."):
            continue
        m = re.match(r"pretrained\.model\.blocks\.(\d+)\.(.*)", k)
        if m:
            i, rest = m.groups()
            base = f"dpt.encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]
                q, kk, vv = v.chunk(3)
                for name, t in (("query", q), ("key", kk), ("value", vv)):
                    out[f"{base}attention.attention.{name}.{kind}"] = t
                continue
            rest = (rest.replace("norm1.", "layernorm_before.").replace("norm2.", "layernorm_after.")
                    .replace("attn.proj.", "attention.output.dense.").replace("mlp.fc1.", "intermediate.dense.")
                    .replace("mlp.fc2.", "output.dense."))
            out[base + rest] = v
            continue
        new = k
        for a, b in [
            ("pretrained.model.cls_token", "dpt.embeddings.cls_token"),
            ("pretrained.model.pos_embed", "dpt.embeddings.position_embeddings"),
            ("pretrained.model.patch_embed.backbone.stem.conv.", "dpt.embeddings.backbone.bit.embedder.convolution."),
            ("pretrained.model.patch_embed.backbone.stem.norm.", "dpt.embeddings.backbone.bit.embedder.norm."),
            ("pretrained.model.patch_embed.backbone.stages.", "dpt.embeddings.backbone.bit.encoder.stages."),
            ("pretrained.model.patch_embed.proj.", "dpt.embeddings.projection."),
            ("pretrained.model.norm.", "dpt.layernorm."),
            ("scratch.output_conv.", "head.head."),
        ]:
            if new.startswith(a):
                new = b + new[len(a):]
        new = re.sub(r"(bit\.encoder\.stages\.\d+)\.blocks\.", r"\1.layers.", new)
        m = re.match(r"pretrained\.act_postprocess(\d)\.(0\.project\.0|3|4)\.(.*)", new)
        if m:
            h, part, rest = m.groups()
            j = int(h) - 1
            new = {"0.project.0": f"neck.reassemble_stage.readout_projects.{j}.0.",
                   "3": f"neck.reassemble_stage.layers.{j}.projection.",
                   "4": f"neck.reassemble_stage.layers.{j}.resize."}[part] + rest
        m = re.match(r"scratch\.layer(\d)_rn\.(.*)", new)
        if m:
            new = f"neck.convs.{int(m[1]) - 1}.{m[2]}"
        m = re.match(r"scratch\.refinenet(\d)\.(.*)", new)
        if m:
            rest = (m[2].replace("out_conv.", "projection.").replace("resConfUnit", "residual_layer")
                    .replace(".conv", ".convolution"))
            new = f"neck.fusion_stage.layers.{4 - int(m[1])}.{rest}"
        out[new] = v
    return out


def hf_hybrid_model():
    from transformers import DPTConfig, DPTForDepthEstimation

    cfg = DPTConfig(is_hybrid=True, image_size=384, patch_size=16, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072, layer_norm_eps=1e-6,
                    backbone_out_indices=[2, 5, 8, 11], neck_hidden_sizes=[256, 512, 768, 768],
                    reassemble_factors=[1, 1, 1, 0.5], fusion_hidden_size=256, readout_type="project",
                    backbone_featmap_shape=[1, 1024, 24, 24], neck_ignore_stages=[0, 1])
    return DPTForDepthEstimation(cfg).eval()


@pytest.fixture(scope="session")
def official_sd():
    return official_state_dict()


TRAIN_MODEL = "effb0.h0-1.heads4.softmax.f32.m0.01_0.0125@64x192"  # tiny; its metric head caps depth at 80 m at y = 0


def train_config(data, out, **kw):
    """A fast training config for the tiny model on synthetic data in ``data`` (``kw`` overrides)."""
    from fastdpt.training import TrainConfig

    base = dict(model=TRAIN_MODEL, out=str(out), data_root=str(data), epochs=2, batch_size=2, lr=1e-3, workers=0,
                kb_crop=False, progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app, **config):
    """A real uvicorn server for ``app`` on a free 127.0.0.1 port (fastdpt's own server configuration);
    yields the port."""
    import uvicorn

    from fastdpt.serve import server_config

    port = free_port()
    srv = uvicorn.Server(server_config(app, "127.0.0.1", port, log_level="warning", **config))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        srv.should_exit = True
        t.join(timeout=10)


@contextmanager
def ray_head(cpus: int = 2):
    """A real Ray head on 127.0.0.1 (``ray start --head --block`` in its own process group), yielding its
    address; on exit only this head's processes are stopped (never ``ray stop``, which would stop
    every Ray cluster on the machine), and nothing is left behind."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile

    port = free_port()
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    temp = tempfile.mkdtemp(prefix="ray-test-")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", str(cpus), "--include-dashboard", "false", "--disable-usage-stats",
                             "--temp-dir", temp], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:  # the GCS port answers once the head is up
            if proc.poll() is not None:
                raise RuntimeError(f"ray start failed: {proc.stderr.read().decode()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the Ray head did not come up in 90 s")
            time.sleep(0.5)
        time.sleep(3.0)  # the raylet registers after the GCS answers (ray_session also retries a late head)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # --block: ray start stops the head's processes on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:  # anything of this head still alive (same session) goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)
