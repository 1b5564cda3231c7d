"""Finding inputs: files, folders, globs and .txt lists."""

from __future__ import annotations

import glob
import os
from pathlib import Path


IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def collect_inputs(items: list[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand inputs into image paths (sorted within folders and globs, order of ``items`` kept).

    A folder is searched recursively for image files; a ``.txt`` file lists one path a line
    (relative paths are taken from the list's folder); anything with ``*?[`` is a glob.
    Returns (paths, messages about inputs that do not exist).
    """
    found: list[Path] = []
    missing: list[str] = []
    for item in items:
        text = str(item)
        p = Path(text)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        elif p.suffix.lower() == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line) if Path(line).is_absolute() else p.parent / line
                    (found.append(q) if q.is_file() else missing.append(f"{q} (listed in {p}) not found"))
        elif any(c in text for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
            found += matches
            if not matches:
                missing.append(f"{text} matches no file")
        elif p.is_file():
            found.append(p)
        else:
            missing.append(f"{p} not found")
    seen, unique = set(), []
    for f in found:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique, missing

