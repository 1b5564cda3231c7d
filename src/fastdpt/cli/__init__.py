"""The command line: each command parses flags, calls one library function and prints.

One module per command group: ``models`` (models, bench, weights, warm-start, export), ``infer``
(predict, video, camera, stream, serve), ``data`` (data synth, data check), ``train`` (train, eval,
eval-pngs), ``demo``; ``common`` holds the shared options and the one-line error exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import typer

from . import compress as _compress
from . import demo as _demo
from . import distill as _distill
from . import infer as _infer
from . import models as _models
from . import train as _train
from .common import quiet_libraries, show_warnings_on_one_line
from .data import data_app
from .study import study_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Online monocular depth estimation with efficient Dense Prediction Transformers.")

for _name, _fn in [("models", _models.models), ("predict", _infer.predict), ("bench", _models.bench),
                   ("weights", _models.weights), ("warm-start", _models.warm_start), ("export", _models.export),
                   ("video", _infer.video), ("camera", _infer.camera), ("stream", _infer.stream),
                   ("serve", _infer.serve), ("demo", _demo.demo), ("train", _train.train),
                   ("eval", _train.evaluate), ("eval-pngs", _train.eval_pngs),
                   ("distill", _distill.distill), ("compress", _compress.compress)]:
    app.command(_name)(_fn)


@app.callback()
def _everywhere(verbose: bool = typer.Option(False, "--verbose", help="also show the libraries' own logs "
                                             "(Lightning, MLflow, Ray): fastdpt --verbose COMMAND ...")) -> None:
    show_warnings_on_one_line()
    if not verbose:
        quiet_libraries()


app.add_typer(data_app, name="data")
app.add_typer(study_app, name="study")


def _terminated(signum, frame) -> None:
    # the data loader's processes got the same SIGTERM (a process group's signal) and die of it: their
    # deaths are expected now, so torch's SIGCHLD handler must not raise them over the interrupt
    signal.signal(signal.SIGCHLD, _expected)  # (not SIG_DFL: a SIGCHLD already pending would raise OSError)
    raise KeyboardInterrupt


def _expected(signum, frame) -> None:
    pass


def main() -> None:
    """The command (the ``fastdpt`` script and ``python -m fastdpt.cli``). SIGTERM (what ``timeout``,
    ``docker stop`` and systemd send) takes Ctrl-C's path: the command keeps what it wrote and says so in
    one line (the data-loader processes a process group's SIGTERM also ends are expected to die: torch's
    SIGCHLD handler is silenced; during training, see ``training.run._stop_on_sigterm``). After
    Ctrl-C (exit 130), once the command has kept what it wrote and said where, the process ends at once:
    tearing down the interpreter (torch, OpenVINO, a worker thread left in the middle of an inference)
    took 4-5 s more with a DPT-Hybrid model (README: about a second)."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    try:
        app()
    except SystemExit as e:
        if e.code != 130:
            raise
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(130)
