"""Files written whole or not at all: `write(tmp)` fills a private temporary file beside the target, which is
then renamed over it, so an interrupted run (or a concurrent one) never leaves a half-written file that a
resumed run would take as done. Shared by every writer of maps, models, reports, banks and cache entries."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part" + path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path, text: str) -> Path:
    return write_atomic(path, lambda t: Path(t).write_text(text))
