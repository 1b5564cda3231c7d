"""``RuntimeOptions``: how a model runs (backend, precision, device, threads, compile mode, memory
order), declared once and passed whole from the command line to the Predictor, streams, the service
and ``bench``; ``auto`` resolves to the fastest choice this machine runs (:mod:`.cpu`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import ConfigError
from ..options import at_least, usable_threads
from .backends import PRECISIONS, REGISTRY, available_backends, by_preference
from .cpu import Choice, choose

AUTO = "auto"


@dataclass(frozen=True)
class RuntimeOptions:
    """``backend``: a registered backend or ``auto``; ``precision``: fp32 / tf32 / fp16 / bf16 / int8 or
    ``auto``; ``device``: cpu, cuda, cuda:1 ...; ``threads``: intra-op threads (torch's are the
    caller's to set; ONNX Runtime and OpenVINO take them per session); ``compile_mode``: for the
    ``compile`` backend; ``channels_last``: convolutions in channels-last order (GPUs)."""

    backend: str = "torch"
    precision: str = "fp32"
    device: str = "cpu"
    threads: int | None = None
    compile_mode: str | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", str(self.device))
        if self.backend != AUTO and self.backend not in REGISTRY:
            raise ConfigError(f"backend must be one of {', '.join(backend_names())}, got {self.backend!r}")
        if self.precision != AUTO and self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join((*PRECISIONS, AUTO))}, got {self.precision!r}")
        at_least(self, "threads", prefix="")
        object.__setattr__(self, "threads", usable_threads(self.threads))

    @property
    def is_auto(self) -> bool:
        return AUTO in (self.backend, self.precision)

    def resolve(self, calibration: bool = False) -> tuple["RuntimeOptions", Choice | None]:
        """These options with ``auto`` replaced by this machine's choice (and the choice, None when
        nothing was automatic). ``calibration``: representative frames are at hand (int8 possible)."""
        if not self.is_auto:
            return self, None
        available = available_backends(self.device)
        best = choose(self.device, available=available, calibration=calibration)
        if self.backend == AUTO and self.precision == AUTO:
            return replace(self, backend=best.backend, precision=best.precision), best
        if self.backend == AUTO:  # the precision is given: the first backend in order of preference that runs it
            order = [best.backend, *by_preference()]
            name = next((n for n in order if n in available and self.precision in REGISTRY[n].precisions), None)
            if name is None:
                raise ConfigError(f"no installed backend runs {self.precision} on {self.device}")
            return replace(self, backend=name), Choice(name, self.precision, f"the first installed backend that runs "
                                                                              f"{self.precision}")
        precision = best_precision(self.backend, self.device, calibration)
        return replace(self, precision=precision), Choice(self.backend, precision, "the best this backend runs natively here")


def best_precision(backend: str, device: str = "cpu", calibration: bool = False, flags=None) -> str:
    """The precision ``auto`` gives a chosen backend on this machine: the row of :func:`.cpu.choose`'s
    table for that backend alone (one policy with ``--backend auto``: int8 on OpenVINO where only int8 is
    native and calibration frames are at hand, bf16 where it is native, else fp32)."""
    if device.startswith("cuda"):
        return "bf16" if "bf16" in REGISTRY[backend].precisions else "fp32"
    best = choose(device, flags=flags, available={backend}, calibration=calibration)
    return best.precision if best.precision in REGISTRY[backend].precisions else "fp32"


def backend_names() -> tuple[str, ...]:
    """What ``--backend`` accepts: every registered backend, and ``auto``."""
    return (*REGISTRY, AUTO)
