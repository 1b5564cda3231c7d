import hashlib
import pickle

import pytest
import torch
from safetensors.torch import save_file

import fastdpt
from conftest import TINY, TINY_EFF, hf_hybrid_model, official_to_hf
from fastdpt.errors import WeightsError, WeightsNotFoundError
from fastdpt.hub import OFFICIAL_WEIGHTS, WeightSource, download, resolve_weights
from fastdpt.weights import load_weights, read_checkpoint_config, read_state_dict, save_checkpoint, warm_start


def test_synthetic_checkpoint_matches_reference_table(official_sd):
    assert len(official_sd) == 368
    assert sum(v.numel() for v in official_sd.values()) == 123_146_985


@pytest.mark.slow
@pytest.mark.parametrize("wrap", [False, True])
def test_official_checkpoint_loads_key_for_key(official_sd, tmp_path, wrap):
    path = tmp_path / "dpt_hybrid-midas-501f0c75.pt"
    torch.save({"model": official_sd} if wrap else official_sd, path)
    model = fastdpt.load("dpt-hybrid-midas", weights=path)
    report = model.load_report
    assert not report.new and not report.mismatched
    assert len(report.loaded) == 360
    assert sorted(report.ignored) == sorted(
        k for k in official_sd if k.startswith(("pretrained.model.head.", "pretrained.model.norm.",
                                                "scratch.refinenet4.resConfUnit1.")))
    own = model.state_dict()
    assert torch.equal(own["encoder.blocks.11.attn.qkv.weight"], official_sd["pretrained.model.blocks.11.attn.qkv.weight"])
    assert torch.equal(own["decoder.fusion.3.rcu2.conv1.weight"], official_sd["scratch.refinenet4.resConfUnit2.conv1.weight"])
    assert sum(p.numel() for p in model.parameters()) == 123_146_985 - 768_000 - 1_000 - 1_536 - 1_180_160


@pytest.mark.slow
def test_outputs_match_hugging_face_dpt(official_sd):
    """Same weights, mapped to transformers' DPTForDepthEstimation (hybrid, 384x384)."""
    ours = fastdpt.create_model("dpt-hybrid-midas").eval()
    load_weights(ours, official_sd)
    hf = hf_hybrid_model()
    missing, unexpected = hf.load_state_dict(official_to_hf(official_sd), strict=False)
    assert not missing and not unexpected
    x = torch.rand(2, 3, 384, 384) * 2 - 1
    with torch.no_grad():
        a = ours(x)
        b = hf(pixel_values=x).predicted_depth
    assert (b > 0).float().mean() > 0.1  # not a degenerate all-zero output
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-4
    # and the Hugging Face layout loads directly
    again = fastdpt.create_model("dpt-hybrid-midas").eval()
    load_weights(again, hf.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(x), a, rtol=0, atol=0)


def test_safetensors_checkpoint_rebuilds_variant(tmp_path):
    model = fastdpt.create_model(TINY_EFF.replace(attention="performer")).eval()
    path = save_checkpoint(model, tmp_path / "run" / "best.safetensors", {"epoch": 3})
    assert read_checkpoint_config(path) == model.config
    loaded = fastdpt.load(path)
    assert loaded.config == model.config
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not list(path.parent.glob("*.part"))


def test_wrong_variant_weights_list_the_keys(tmp_path):
    path = save_checkpoint(fastdpt.create_model(TINY.replace(hooks=(0, 3))), tmp_path / "a.safetensors")
    with pytest.raises(WeightsError, match=r"unexpected 2.*encoder\.blocks\.2.*warm-start"):
        fastdpt.load(TINY.name, weights=path)
    other = save_checkpoint(fastdpt.create_model(TINY.replace(features=64)), tmp_path / "b.safetensors")
    with pytest.raises(WeightsError, match=r"shape mismatch .*decoder\.layer_rn\.0\.weight \(64, 256, 3, 3\) vs \(32, 256, 3, 3\)"):
        fastdpt.load(TINY.name, weights=other)


def test_corrupt_and_unsafe_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(fastdpt.create_model(TINY).state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    for bad in (truncated, garbage):
        with pytest.raises(WeightsError, match="cannot read weights"):
            read_state_dict(bad)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(WeightsError, match="refuses to unpickle|cannot read"):
        read_state_dict(evil)
    notsd = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], notsd)
    with pytest.raises(WeightsError, match="not a state dict"):
        read_state_dict(notsd)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        fastdpt.load("dpt-hybrid-kitti", weights=tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match="name the variant"):
        fastdpt.load(good)
    odd = tmp_path / "odd.safetensors"
    save_file({"foo.bar": torch.zeros(2)}, str(odd))
    with pytest.raises(WeightsError, match="unrecognised weight layout"):
        fastdpt.load(TINY.name, weights=odd)


def test_preset_offline_without_cache_says_how_to_get_weights(tmp_path):
    with pytest.raises(WeightsNotFoundError) as e:
        fastdpt.load("dpt-hybrid-kitti", cache=tmp_path, allow_download=False)
    msg = str(e.value)
    assert OFFICIAL_WEIGHTS["dpt-hybrid-kitti"].url in msg and "--weights" in msg and str(tmp_path) in msg
    with pytest.raises(WeightsNotFoundError, match="no published weights"):
        fastdpt.load("effb0.h0-1.heads1.performer.f256.kitti@192x640")


def test_preset_found_in_cache_is_hashed_once(tmp_path, monkeypatch):
    import fastdpt.hub as hub

    payload = b"official weights" * 100
    src = WeightSource("dpt_hybrid_nyu-" + hashlib.sha256(payload).hexdigest()[:8] + ".pt")
    monkeypatch.setitem(OFFICIAL_WEIGHTS, "dpt-hybrid-nyu", src)
    (tmp_path / src.file).write_bytes(payload)
    calls = []
    real = hub.sha256_file
    monkeypatch.setattr(hub, "sha256_file", lambda p: calls.append(p) or real(p))
    assert resolve_weights("dpt-hybrid-nyu", cache=tmp_path, allow_download=False) == tmp_path / src.file
    monkeypatch.setenv("FASTDPT_CACHE", str(tmp_path))
    assert resolve_weights("dpt-hybrid-nyu", allow_download=False) == tmp_path / src.file
    assert len(calls) == 1  # hashed on first use, then the stamp beside it answers
    # the file changes under the stamp (same name): hashed again and refused in one line
    (tmp_path / src.file).write_bytes(payload[:-1])
    with pytest.raises(WeightsNotFoundError, match="does not match its pinned sha256.*delete it"):
        resolve_weights("dpt-hybrid-nyu", allow_download=False)
    assert len(calls) == 2


def test_a_damaged_cached_file_is_refused_at_first_use_and_by_verify(tmp_path):
    """A cached file is hashed once (its first use) and on demand (`weights --verify`); a mismatch is
    named in one line (it was trusted unhashed before)."""
    from typer.testing import CliRunner

    from fastdpt.cli import app

    src = OFFICIAL_WEIGHTS["dpt-hybrid-kitti"]
    (tmp_path / src.file).write_bytes(b"truncated download")
    digest = hashlib.sha256(b"truncated download").hexdigest()
    for extra in ([], ["--verify"]):
        r = CliRunner().invoke(app, ["weights", "dpt-hybrid-kitti", "--cache", str(tmp_path), *extra])
        text = " ".join(r.output.split())
        assert r.exit_code == 2 and digest[:8] in text and src.sha256_prefix in text and "delete it" in text, text


def test_download_checks_sha256_prefix(tmp_path):
    payload = tmp_path / "remote.bin"
    payload.write_bytes(b"official bytes" * 1000)
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    ok = download(payload.as_uri(), tmp_path / "cache" / "w.pt", sha256_prefix=digest[:8])
    assert ok.read_bytes() == payload.read_bytes()
    with pytest.raises(WeightsError, match="sha256"):
        download(payload.as_uri(), tmp_path / "cache" / "bad.pt", sha256_prefix="00000000")
    assert not (tmp_path / "cache" / "bad.pt").exists()
    assert not list((tmp_path / "cache").glob("*.part"))
    assert WeightSource("dpt_hybrid_kitti-cb926ef4.pt").sha256_prefix == "cb926ef4"


@pytest.mark.slow
def test_warm_start_study_variants_from_official(official_sd):
    m = fastdpt.create_model("r50.h0-1.heads1.performer.f256.kitti@192x640", init=None)
    r = warm_start(m, official_sd)
    assert not r.mismatched
    assert r.new == [f"encoder.blocks.{i}.attn.projection" for i in (0, 1)]  # only the FAVOR+ buffers
    assert any("pruned blocks 2+" in n for n in r.notes)
    e = fastdpt.create_model("effb0.h8-11.heads24.softmax.f256.kitti@192x640")
    r = warm_start(e, official_sd)
    assert sorted(r.mismatched) == ["decoder.layer_rn.0.weight", "decoder.layer_rn.1.weight", "encoder.proj.weight"]
    assert all(k.startswith(("encoder.cnn.", "encoder.proj.", "decoder.layer_rn.")) for k in r.new)
    assert any("randomly initialised" in n for n in r.notes)
    assert torch.equal(e.state_dict()["encoder.blocks.11.mlp.fc2.weight"], official_sd["pretrained.model.blocks.11.mlp.fc2.weight"])


def test_warm_start_takes_backbone_imagenet_weights(tmp_path):
    import timm

    ref = timm.create_model("efficientnet_b0", num_classes=0, global_pool="")
    path = tmp_path / "effb0.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    donor = fastdpt.create_model(TINY)  # an r50 model: nothing of the CNN fits effb0
    m = fastdpt.create_model(TINY_EFF)
    r = warm_start(m, donor.state_dict(), backbone_weights=path)
    assert any("from ImageNet weights" in n for n in r.notes)
    assert torch.equal(m.encoder.cnn.model.conv_head.weight, ref.conv_head.weight)


def test_a_checkpoint_whose_name_was_edited_is_refused(tmp_path):
    # metadata that changes only heads, @HxW or the metric head fits the tensors; the fingerprint does not
    from safetensors import safe_open

    from fastdpt.config import CONFIG_KEY, FINGERPRINT_KEY, fingerprint

    model = fastdpt.create_model(TINY_EFF).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"note": "kept"})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta[FINGERPRINT_KEY] == hashlib.sha256(TINY_EFF.name.encode()).hexdigest()[:16] == fingerprint(TINY_EFF.name)
    assert read_checkpoint_config(path) == TINY_EFF and meta["note"] == "kept"
    for other in (TINY_EFF.replace(heads=1), TINY_EFF.replace(input_size=(96, 128)), TINY_EFF.replace(metric=(1e-4, 1e-2))):
        save_file(tensors, str(tmp_path / "edited.safetensors"), metadata={**meta, CONFIG_KEY: other.name})
        with pytest.raises(WeightsError, match="fingerprint mismatch"):
            fastdpt.load(tmp_path / "edited.safetensors")
    # a file saved before fingerprints existed still loads (its name is all it has)
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={CONFIG_KEY: TINY_EFF.name, "format": "pt"})
    assert fastdpt.load(tmp_path / "old.safetensors").config == TINY_EFF
    # metadata passed by a caller cannot replace the name or the fingerprint
    p2 = save_checkpoint(model, tmp_path / "m2.safetensors", {CONFIG_KEY: "r50", FINGERPRINT_KEY: "0"})
    assert read_checkpoint_config(p2) == TINY_EFF
