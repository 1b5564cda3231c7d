"""Downloads with pinned hashes (official weights, split lists), the cache, and the offline rules.

Files land in ``$FASTDPT_CACHE`` (default ``~/.cache/fastdpt``) through a temporary file that is
renamed only after its sha256 checks out. ``FASTDPT_OFFLINE=1`` turns every download off.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import FastDPTError, WeightsError, WeightsNotFoundError

RELEASE_URL = "https://github.com/isl-org/DPT/releases/download/1_0/"


@dataclass(frozen=True)
class WeightSource:
    file: str
    hf_repo: str | None = None

    @property
    def url(self) -> str:
        return RELEASE_URL + self.file

    @property
    def sha256_prefix(self) -> str:
        """The hex digest prefix the official file names carry (``name-<8 hex>.pt``)."""
        m = re.search(r"-([0-9a-f]{8})\.pt$", self.file)
        return m.group(1) if m else ""


OFFICIAL_WEIGHTS: dict[str, WeightSource] = {
    "dpt-hybrid-midas": WeightSource("dpt_hybrid-midas-501f0c75.pt", hf_repo="Intel/dpt-hybrid-midas"),
    "dpt-hybrid-kitti": WeightSource("dpt_hybrid_kitti-cb926ef4.pt"),
    "dpt-hybrid-nyu": WeightSource("dpt_hybrid_nyu-2ce69ec7.pt"),
}


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$FASTDPT_CACHE``, else ``~/.cache/fastdpt``."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get("FASTDPT_CACHE", Path.home() / ".cache" / "fastdpt"))


def offline() -> bool:
    return os.environ.get("FASTDPT_OFFLINE") == "1"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256_prefix: str = "", timeout: float = 30.0,
             progress: Callable[[int, int], None] | None = None) -> Path:
    """Download ``url`` to ``dest`` through a temporary file; check the sha256 prefix; rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if sha256_prefix:
            digest = sha256_file(tmp)
            if not digest.startswith(sha256_prefix):
                raise WeightsError(f"{url}: sha256 {digest[:12]}... does not start with {sha256_prefix}; "
                                   "the download is corrupt or not the official file")
        os.replace(tmp, dest)
        if sha256_prefix:
            _stamp(dest, digest)  # hashed here once: the cache does not hash it again (cached_digest)
        return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp(path: Path, digest: str) -> None:
    """Remember that ``path`` (this size, this modification time) hashed to ``digest``."""
    st = path.stat()
    try:
        _stamp_path(path).write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}))
    except OSError:
        pass  # a read-only cache: it is hashed again next time


def cached_digest(path: Path, rehash: bool = False) -> str:
    """The sha256 of a cached file, hashed once: a ``<file>.sha256`` stamp beside it (size, modification
    time, digest) saves hashing 500 MB on every load; a file changed since (size or time) is hashed
    again, as is every file with ``rehash``."""
    st = path.stat()
    if not rehash:
        try:
            stamp = json.loads(_stamp_path(path).read_text())
            if stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns:
                return str(stamp["sha256"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    digest = sha256_file(path)
    _stamp(path, digest)
    return digest


def fetch_pinned(url: str, target: Path, sha256: str, error: type[FastDPTError], what: str,
                 allow_download: bool = True, progress: Callable[[int, int], None] | None = None,
                 how: str | None = None) -> Path:
    """``target`` if it is cached with the pinned sha256 (the whole digest, or the prefix an official
    weights name carries), else downloaded from ``url`` and checked: the one download path of weights
    and split lists. A cached file is hashed once (:func:`cached_digest`). Failures raise ``error``
    saying how to provide the file by hand (``how``)."""
    how = how or f"save {url} as {target}"
    if target.is_file():
        digest = cached_digest(target)
        if digest.startswith(sha256):
            return target
        raise error(f"{target} does not match its pinned sha256 ({digest[:8]} != {sha256[:8]}): it is damaged or "
                    "another file; delete it to fetch it again")
    if not allow_download or offline():
        raise error(f"{what} is not cached and downloads are off: {how}")
    try:
        return download(url, target, sha256_prefix=sha256, progress=progress)
    except (urllib.error.URLError, OSError, TimeoutError, WeightsError) as e:
        raise error(f"could not fetch {what} from {url} ({e}): {how}") from None


def resolve_weights(preset: str, weights: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                    allow_download: bool = True, progress: Callable[[int, int], None] | None = None,
                    flag: str = "--weights") -> Path:
    """The local file of a preset's official weights: the given path, the cache, or a download.

    Raises :class:`WeightsNotFoundError` with exact instructions when none works; ``flag`` is the option
    of the command in use that takes a weights file (``--teacher-weights`` for ``distill``).
    """
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"weights file not found: {p}")
        return p
    src = OFFICIAL_WEIGHTS.get(preset)
    if src is None:
        raise WeightsNotFoundError(
            f"{preset!r} has no published weights: pass a checkpoint trained for it ({flag} FILE), "
            "or build it untrained with fastdpt.create_model() / warm-start it with fastdpt.warm_start()"
        )
    target = cache_dir(cache) / src.file
    how = (f"download {src.url} into {target.parent}/ (e.g. `curl -L -o {target} {src.url}`), "
           f"or pass {flag} PATH / weights=PATH")
    return fetch_pinned(src.url, target, src.sha256_prefix, WeightsNotFoundError, f"weights for {preset!r}",
                        allow_download, progress, how)


def verify_weights(preset: str, path: str | os.PathLike) -> Path:
    """Hash a preset's weights file again and check it against the sha256 prefix its official name
    carries (``fastdpt weights PRESET --verify``); otherwise a cached file is hashed once."""
    src = OFFICIAL_WEIGHTS.get(preset)
    path = Path(path)
    if src is None or not src.sha256_prefix:
        raise WeightsError(f"{preset!r} has no pinned hash to verify against")
    digest = cached_digest(path, rehash=True)
    if not digest.startswith(src.sha256_prefix):
        raise WeightsError(f"{path} does not match its pinned sha256 ({digest[:8]} != {src.sha256_prefix}): it is damaged "
                           "or another file; delete it to download it again")
    return path


def hub_weights(repo: str, cache: str | os.PathLike | None = None) -> Path:
    """A Hugging Face hub repository's weight file (``pip install -e '.[hub]'``), e.g.
    ``Intel/dpt-hybrid-midas``; safetensors preferred, a torch pickle read safely otherwise."""
    if offline():
        raise WeightsNotFoundError(f"cannot fetch {repo} from the Hugging Face hub: downloads are off (FASTDPT_OFFLINE=1)")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsError("the Hugging Face hub needs `pip install -e '.[hub]'`") from None
    last: Exception | None = None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(repo, fname, cache_dir=str(cache) if cache else None))
        except Exception as e:  # noqa: BLE001 - the hub raises many types; report the last
            last = e
    raise WeightsNotFoundError(f"could not fetch {repo} from the Hugging Face hub: {last}")
