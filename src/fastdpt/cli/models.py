"""Model commands: models, bench, weights, warm-start, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..errors import ConfigError, FastDPTError
from .common import (DeviceOpt, PrecisionOpt, ThreadsOpt, WeightsOpt, check_model, console, one_line_errors, out,
                     parse_size, print_table)


@one_line_errors
def models(
    pattern: Optional[str] = typer.Argument(None, help="a group (official, study, study@192x640, fast) or a glob"),
    macs: bool = typer.Option(False, "--macs", help="also count MACs at each preset's network size"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the list as JSON"),
) -> None:
    """List presets with their canonical names and parameter counts."""
    import json

    from ..bench import config_params, count_macs
    from ..io import atomic_write
    from ..presets import PRESETS, list_models

    rows = []
    for name in list_models(pattern):
        p = PRESETS[name]
        row = {"name": name, "canonical": p.config.name, "params": config_params(p.config),
               "output": p.config.output_kind, "weights": p.weights or "", "groups": list(p.groups)}
        if macs:
            row["macs"] = count_macs(p.config, p.config.input_size)
        rows.append(row)
    if json_out:
        atomic_write(json_out, lambda p: p.write_text(json.dumps(rows, indent=1)))
    aliases = any(r["name"] != r["canonical"] for r in rows)
    headers = [*(["name"] if aliases else []), "canonical name", "params (M)", *(["GMACs"] if macs else []), "output",
               "official weights"]
    cells = [[*([r["name"] if r["name"] != r["canonical"] else ""] if aliases else []), r["canonical"],
              f"{r['params'] / 1e6:.2f}", *([f"{r['macs'] / 1e9:.1f}"] if macs else []), r["output"],
              "yes" if r["weights"] else ""] for r in rows]
    print_table(f"fastdpt presets ({len(rows)})", headers, cells, names=(0, 1) if aliases else (0,))


@one_line_errors
def bench(
    names: List[str] = typer.Argument(..., help="presets, canonical names, groups (e.g. study), .safetensors checkpoints "
                                      "or exported .onnx / OpenVINO .xml files (run as they are)"),
    input_size: str = typer.Option("352x1216", "--input-size", help="frame size HxW fed to the pipeline"),
    batch_size: int = typer.Option(1, "--batch-size"),
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "fp32",
    backend: Annotated[str, typer.Option("--backend", help="a backend, auto, or all: every backend x precision this "
                                         "machine runs natively, side by side")] = "torch",
    runs: int = typer.Option(10, "--runs"),
    warmup: int = typer.Option(2, "--warmup"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="report speed-up over this variant, measured in the same run"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the rows as JSON"),
    channels_last: bool = typer.Option(False, "--channels-last", help="channels-last convolutions (GPU)"),
    compile_mode: Optional[str] = typer.Option(None, "--compile-mode", help="torch.compile mode, e.g. reduce-overhead"),
    stages: bool = typer.Option(False, "--stages", help="time the online step stage by stage (decode, preprocess, "
                                "network, postprocess, colour, encode)"),
) -> None:
    """Parameters, MACs, the whole online step (latency median/p90, FPS) beside the network alone,
    throughput and memory of variants; --baseline adds speed-ups measured in the same run; --backend all
    times every backend x precision side by side. `fastdpt bench attention` instead times one attention
    block against the number of tokens."""
    from ..bench import all_runtimes, bench_many, runs_file, write_bench_json
    from ..runtime import matrix_features

    if names == ["attention"]:
        return _bench_attention(device, runs, warmup, threads, json_path)
    size = parse_size(input_size)
    features = " ".join(matrix_features()) or "-"
    if stages:
        return _bench_stages(names, size, device, backend, precision, threads, runs, warmup, json_path, features)
    runtimes = all_runtimes(device) if backend == "all" else [(backend, precision)]
    from ..runtime import RuntimeOptions
    from ..runtime.quantize import calibration_for

    calibration = next((c for c in (calibration_for(RuntimeOptions(b, p, device, threads)) for b, p in runtimes)
                        if c is not None), None)
    rows = []
    with console.status("benchmarking") as status:
        def report(i, n, row):
            status.update(f"[{i}/{n}] done {row.name}")
            console.print(f"[{i}/{n}] {row.name} {row.backend} {row.precision}: {row.latency_ms_median:.1f} ms, "
                          f"{row.fps:.2f} FPS", highlight=False)

        for b, p in runtimes:
            todo = [n for n in names if backend != "all" or runs_file(n, b, p)]
            if todo:
                rows += bench_many(todo, baseline, on_row=report, input_size=size, batch_size=batch_size, device=device,
                                   precision=p, runs=runs, warmup=warmup, threads=threads, backend=b,
                                   calibration=calibration, channels_last=channels_last, compile_mode=compile_mode)
    if backend == "all":  # speed-up of each runtime over the first (torch fp32) for the same variant
        first = {}
        for r in rows:
            first.setdefault(r.name, r)
            r.speedup = round(first[r.name].latency_ms_median / r.latency_ms_median, 3)
    ratio = baseline or backend == "all"
    files = any(r.file_mb is not None for r in rows)  # checkpoints (compressed models ...): their file size too
    headers = ["variant", "backend", *(["speed-up"] if ratio else []), "step ms (p50/p90)", "net ms", "FPS", "net size",
               "params (M)", "GMACs", *(["file MB"] if files else []), "throughput", "peak MB"]
    cells = [[r.name, f"{r.backend} {r.precision}", *([f"{r.speedup:.2f}x"] if ratio else []),
              f"{r.latency_ms_median:.1f} / {r.latency_ms_p90:.1f}", f"{r.net_ms_median:.1f}", f"{r.fps:.2f}", r.net_size,
              f"{r.params / 1e6:.1f}", f"{r.macs / 1e9:.2f}",
              *([f"{r.file_mb:.1f}" if r.file_mb is not None else "-"] if files else []),
              f"{r.throughput:.2f}", f"{r.peak_mem_mb:.0f}"] for r in rows]
    print_table(f"fastdpt bench: {size[0]}x{size[1]} frames, {device} ({features}), {rows[0].threads} threads",
                headers, cells)
    if json_path:
        write_bench_json(rows, json_path)


def _bench_stages(names, size, device, backend, precision, threads, runs, warmup, json_path, features) -> None:
    import json

    from ..bench import STAGES, bench_stages, environment
    from ..io import atomic_write
    from ..runtime.exported import is_exported

    results = []
    for name in names:
        model, source, options = None, None, {"backend": backend, "precision": precision}
        if name.endswith(".safetensors"):
            from ..api import load

            model = load(name)
        elif is_exported(name):
            from ..bench import exported_model, file_options

            check_model(name)
            model, source, options = exported_model(name), name, file_options(name, options)
        with console.status(f"timing the stages of {name}"):
            results.append(bench_stages(name, size, runs=runs, warmup=warmup, model=model, source=source,
                                        device=device, threads=threads, **options))
    headers = ["variant", "backend", *STAGES, "total ms"]
    cells = [[r["name"], f"{r['backend']} {r['precision']}",
              *(f"{r['stages'][k]['ms']:.1f} ({r['stages'][k]['share']:.0%})" for k in STAGES), f"{r['total_ms']:.1f}"]
             for r in results]
    print_table(f"fastdpt bench --stages: {size[0]}x{size[1]} frames, {device} ({features}), median ms (share)",
                headers, cells)
    if json_path:
        atomic_write(json_path, lambda p: p.write_text(json.dumps({"environment": environment(), "rows": results},
                                                                  indent=1)))


@one_line_errors
def weights(
    preset: Optional[str] = typer.Argument(None, help="dpt-hybrid-midas | dpt-hybrid-kitti | dpt-hybrid-nyu"),
    hub: Optional[str] = typer.Option(None, "--hub", help="a Hugging Face repository instead, e.g. Intel/dpt-hybrid-midas"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="cache folder (default $FASTDPT_CACHE or ~/.cache/fastdpt)"),
    verify: bool = typer.Option(False, "--verify", help="hash the (cached) file again and check its pinned sha256"),
) -> None:
    """Download a preset's official weights (sha256-checked), or a Hugging Face repository's, and print the path."""
    from ..hub import hub_weights, resolve_weights, verify_weights

    if (preset is None) == (hub is None):
        raise ConfigError("name a preset or give --hub REPO (one of the two)")
    with console.status(f"fetching {preset or hub}"):
        path = resolve_weights(preset, cache=cache) if preset else hub_weights(hub, cache=cache)
    if verify and preset:
        with console.status(f"hashing {path}"):
            verify_weights(preset, path)
        console.print(f"{path}: sha256 matches", highlight=False)
    out.print(str(path), highlight=False)


@one_line_errors
def warm_start(
    model: str = typer.Argument(..., help="preset or canonical name of the variant to build"),
    init: Path = typer.Option(..., "--init", help="weights to start from (official, HF or fastdpt)"),
    output: Path = typer.Option(..., "--output", "-o", help="fastdpt .safetensors checkpoint to write"),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights", help="timm CNN checkpoint, or 'hub'"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output file"),
) -> None:
    """Build a (modified) variant from existing weights, print the report, save a checkpoint."""
    from ..api import create_model
    from ..io import check_new_file
    from ..weights import save_checkpoint

    check_new_file(output, overwrite)
    m = create_model(model, init=init, backbone_weights=backbone_weights)
    console.print(str(m.load_report), highlight=False)
    out.print(str(save_checkpoint(m, output, {"init": str(init)})), highlight=False)


@one_line_errors
def export(
    model: str = typer.Argument(..., help="preset, canonical name or .safetensors checkpoint"),
    weights: WeightsOpt = None,
    fmt: str = typer.Option("onnx", "--format", help="onnx | openvino (.xml + .bin)"),
    int8: bool = typer.Option(False, "--int8", help="also write <stem>-int8.onnx (static int8, calibrated on synthetic driving frames)"),
    output: Path = typer.Option(..., "--output", "-o", help="the .onnx (or OpenVINO .xml) file to write"),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="network input HxW (default: the variant's)"),
    untrained: bool = typer.Option(False, "--untrained", help="export random weights (speed tests only)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing output files"),
) -> None:
    """Export to ONNX or OpenVINO IR with the variant's name in the metadata; check it against PyTorch."""
    from .. import api
    from ..workflows import export_and_verify

    from ..io import check_new_file
    from ..workflows import int8_path

    from ..workflows import EXPORT_FORMATS

    if fmt not in EXPORT_FORMATS:
        raise FastDPTError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "openvino" and output.suffix != ".xml":
        raise FastDPTError(f"an OpenVINO model is written as .xml (+ .bin), got {output.name}")
    size = parse_size(input_size) if input_size else None
    for path in [output] + ([int8_path(output)] if int8 else []):
        check_new_file(path, overwrite)  # before the model is loaded
    m = api.create_model(model) if untrained else api.load(model, weights)
    with console.status("exporting"):
        rep = export_and_verify(m, output, size, int8=int8, overwrite=overwrite, fmt=fmt)
    out.print(f"{rep.path}: max abs error {rep.max_abs:.3g}, max rel error {rep.max_rel:.3g} "
              f"({rep.inputs} random and synthetic-scene inputs)", highlight=False)
    if rep.int8_path:
        out.print(f"{rep.int8_path}: int8 vs PyTorch fp32: max abs error {rep.int8_max_abs:.3g}, "
                  f"max rel error {rep.int8_max_rel:.3g}", highlight=False)


def _bench_attention(device: str, runs: int, warmup: int, threads, json_path) -> None:
    import json
    import sys

    from ..bench import bench_attention, environment, favor_crossover
    from ..io import atomic_write

    with console.status("timing attention") as status:
        rows = bench_attention(device, runs=min(runs, 3), warmup=min(warmup, 1), threads=threads,
                               on_row=lambda r: status.update(f"{r['kernel']} {r['heads']} heads {r['tokens']} tokens"))
    kernels = sorted({r["kernel"] for r in rows})
    tokens = sorted({r["tokens"] for r in rows})
    def cell(h, n, k) -> str:
        r = next((r for r in rows if r["heads"] == h and r["tokens"] == n and r["kernel"] == k), None)
        return "" if r is None else "skipped" if r["ms"] is None else f"{r['ms']:.2f}"

    for h in sorted({r["heads"] for r in rows}):
        cells = [[str(n), *[cell(h, n, k) for k in kernels]] for n in tokens]
        print_table(f"attention block, {h} heads, ms ({device})", ["tokens", *kernels], cells)
    cross = favor_crossover(rows)
    out.print("FAVOR+ (default features) overtakes SDPA from: " +
              ", ".join(f"{h} heads: {n if n else 'never'}" + (" tokens" if n else "") for h, n in cross.items()), highlight=False)
    if json_path:
        payload = {"environment": environment(), "command": " ".join(sys.argv), "rows": rows, "crossover": cross}
        atomic_write(json_path, lambda p: p.write_text(json.dumps(payload, indent=1)))
