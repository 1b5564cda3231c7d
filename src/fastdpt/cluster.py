"""One way to reach Ray for every parallel job (the study's trials, distillation's labelling).

Without an address Ray always starts in this process, on 127.0.0.1 (``address="local"``): it never
joins another job's cluster that happens to run on the machine. With an address (``auto``,
``host:port`` after ``ray start --head``, or ``ray://host:10001``) it joins that cluster; a cluster that
cannot be reached is one line naming the address, Ray's reason, and what to check.

Ray >= 2.59 turns on its token authentication for local clusters: a local ``ray.init()`` (the study
without ``--address`` included) writes ``~/.ray/auth_token``, and from then on ``ray start --head``
finds it and demands the token, while a driver given ``--address`` does not send it unless
``RAY_AUTH_MODE=token``: it fails with "Failed to connect to Ray cluster". So a driver joining an address
follows Ray's rule for heads: when the user chose no mode and a Ray token exists, it sends it (a head
without authentication ignores it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

from .errors import ClusterError


def ray_module():
    try:
        import ray
    except ImportError:
        raise ClusterError("parallel runs need Ray: pip install -e '.[study]'") from None
    return ray


def _send_ray_token_if_any() -> None:
    """Ray's own rule for a head (token mode when the user chose no mode and a token exists), applied to a
    driver that joins an address. Like Ray's local ``ray.init()``, it sets ``RAY_AUTH_MODE=token`` for the
    process. Ray releases without token authentication (< 2.52) have nothing to do."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A ``host:port`` nobody answers on fails at once (Ray itself keeps trying for minutes)."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except ValueError:
        raise ClusterError(f"--address {address!r} is not host:port (or auto, or ray://host:10001)") from None
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r} ({e.strerror or e}); check that `ray start "
                           "--head` runs there, and the node IP and port it printed") from None


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                verbose: int = 1) -> Iterator[object]:
    """Ray, initialised for the block (and shut down after it when this call started it)."""
    ray = ray_module()
    if ray.is_initialized():
        yield ray
        return
    if address:
        _check_reachable(address)
        _send_ray_token_if_any()
    private = None if address else tempfile.mkdtemp(prefix="fastdpt-ray-")  # 0700: Ray's session folders
    try:                                                                      # (0777 inside) reachable by us only
        if address:
            for attempt in range(3):  # a head that just started (or a loaded machine) may answer late
                try:
                    ray.init(address=address, log_to_driver=verbose > 0, logging_level="ERROR")
                    break
                except ConnectionError:
                    if attempt == 2:
                        raise
                    time.sleep(2.0)
        else:
            import torch

            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
                     num_gpus=torch.cuda.device_count() if num_gpus is None else num_gpus,
                     include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=verbose > 0,
                     _node_ip_address="127.0.0.1", logging_level="ERROR",
                     _temp_dir=os.path.join(private, "ray"))  # Ray makes its own folder 0777: one level down
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
        if private:
            shutil.rmtree(private, ignore_errors=True)
        reason = " ".join(str(e).split())[:200]
        if address:
            raise ClusterError(f"cannot reach the Ray cluster at {address!r} ({reason}); check that `ray start --head` "
                               "runs there, the node IP and port it printed, and, if it uses Ray's token "
                               "authentication, that its token is in ~/.ray/auth_token or $RAY_AUTH_TOKEN") from None
        raise ClusterError(f"cannot start a local Ray instance ({reason})") from None
    try:
        yield ray
    finally:
        ray.shutdown()
        if private:  # the session's logs and sockets go with it (they were left under /tmp/ray for good)
            shutil.rmtree(private, ignore_errors=True)
