"""Lowered graphs kept across processes: the second `fvgraph explain` on a model reuses what the first built.

An entry is onnxruntime's *optimized* explainer graph (its weights in a data file beside it) and the lowering's
description (outputs, seeds, parameters), in a folder of the cache (fvgraph.cache.cache_dir) named by a hash of
- the model file's bytes (hashed once per path, size and modification time: an index remembers it),
- what was lowered (the method's rules and options, the target kind, the input signature),
- fvgraph's, onnxruntime's and onnx's versions, the platform and the CPU's feature flags (onnxruntime's layout
  optimizations are specific to the processor).
A hit loads in milliseconds what costs a lowering and a graph optimization (0.5-1.5 s) to build. Entries are
written to a private temporary folder and renamed into place, so concurrent processes never see a half-written
entry (the first to finish wins; the others drop theirs); an entry whose description does not match the
versions it was made with is ignored. Models given as bytes or protos are not cached (no file to hash), nor
graphs with more than MAX_BYTES of weights; the whole cache stays under TOTAL_BYTES (2 GB by default,
FVGRAPH_CACHE_TOTAL_MB), the least recently used entries going first.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from .cache import cache_dir

FORMAT = 1
# Graphs whose weights exceed this are not kept: writing their optimized copy (VGG-16 guided: 584 MB, 2.7 s)
# costs more than the lowering and optimization it would save (1.4 s in all there); FVGRAPH_CACHE_MAX_MB moves it
MAX_BYTES = int(float(os.environ.get("FVGRAPH_CACHE_MAX_MB", 256)) * 2**20)
# The cache as a whole stays under this: after each new entry the least recently used ones go
TOTAL_BYTES = int(float(os.environ.get("FVGRAPH_CACHE_TOTAL_MB", 2048)) * 2**20)


@lru_cache(maxsize=1)
def environment() -> dict:
    import numpy
    import onnx
    import onnxruntime
    from . import __version__
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    return {"format": FORMAT, "fvgraph": __version__, "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "numpy": numpy.__version__, "machine": platform.machine(),
            "cpu": hashlib.sha256(flags.encode()).hexdigest()[:16]}


def root() -> Path | None:
    d = cache_dir()
    return None if d is None else d / "graphs"


def file_hash(path) -> str | None:
    """The sha256 of a file's bytes, remembered per (path, size, mtime) in the cache's index."""
    base = root()
    if base is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    index = base / "index" / key
    try:
        return index.read_text().strip()
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    _write_atomic(index, digest)
    return digest


def _write_atomic(path: Path, text: str):
    from .files import write_text
    try:
        write_text(path, text)
    except OSError:
        pass  # a read-only or full cache only costs speed


def entry_for(model, parts) -> Path | None:
    """The folder of an entry (existing or to be written), or None when the model cannot be cached."""
    base = root()
    if base is None or not model.source or not os.path.isfile(model.source):
        return None
    digest = file_hash(model.source)
    if digest is None:
        return None
    key = json.dumps([digest, environment(), parts], sort_keys=True, default=str)
    return base / hashlib.sha256(key.encode()).hexdigest()[:40]


def read(entry: Path) -> dict | None:
    """The entry's description when it is complete and was made by this environment, else None."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("environment") != environment() or not (entry / "optimized.onnx").exists():
        return None
    try:
        os.utime(entry / "meta.json")  # used now: the last to be evicted
    except OSError:
        pass
    return meta


def staging(entry: Path) -> Path | None:
    """A private folder to write an entry into (then `publish`)."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}-"))
    except OSError:
        return None


def publish(tmp: Path, entry: Path, meta: dict):
    """Write the description and move the folder into place; another process's entry wins a race."""
    try:
        (tmp / "meta.json").write_text(json.dumps({**meta, "environment": environment()}))
        os.rename(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    evict(entry.parent, TOTAL_BYTES)


def evict(base: Path, limit: int):
    """Remove the least recently used entries until the entries under `base` take at most `limit` bytes."""
    entries = []
    for e in base.iterdir() if base.exists() else []:
        if not e.is_dir() or e.name.startswith(".") or e.name == "index":
            continue
        try:
            size = sum(f.stat().st_size for f in e.iterdir())
            entries.append(((e / "meta.json").stat().st_mtime, size, e))
        except OSError:
            continue
    total = sum(s for _, s, _ in entries)
    for _, size, e in sorted(entries, key=lambda r: r[0]):
        if total <= limit:
            break
        shutil.rmtree(e, ignore_errors=True)
        total -= size
