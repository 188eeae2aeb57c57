"""Lowered graphs kept across processes: the second `fvgraph explain` on a model reuses what the first built.

An entry is onnxruntime's *optimized* explainer graph (its weights in a data file beside it) and the lowering's
description (outputs, seeds, parameters), in a folder of the cache (fvgraph.cache.cache_dir) named by a hash of
- the model file's bytes,
- what was lowered (the method's rules and options, the target kind, the input signature),
- fvgraph's, onnxruntime's and onnx's versions, a hash of fvgraph's source files, the platform and the CPU's
  feature flags (onnxruntime's layout optimizations are specific to the processor).
A hit loads in milliseconds what costs a lowering and a graph optimization (0.5-1.5 s) to build. Entries are
written to a private temporary folder and renamed into place, so concurrent processes never see a half-written
entry (the first to finish wins; the others drop theirs). Models given as bytes or protos are not cached (no
file to hash), nor graphs with more than MAX_BYTES of weights; the whole cache stays under TOTAL_BYTES (2 GB by
default, FVGRAPH_CACHE_TOTAL_MB), the least recently used entries going first.

The cache never changes a result. An entry's meta.json records its key (the folder's name) and the size and
sha256 of each of its files when it is written; before use, `read` checks the key against the folder, the
environment, the shape of everything the loader reads, and each file's size and hash. Anything wrong (a
truncated, edited, swapped or foreign entry, a meta.json of the wrong shape) is a miss: the entry is removed,
one warning line says why, and the graph is rebuilt (fvgraph.model also takes an entry onnxruntime refuses as a
miss). A cache folder or entry owned by another user, or writable by others without the sticky bit, is not used
(said once per process); fvgraph creates its folders with mode 0700.

File hashes (the model's, and an entry's files') are remembered in the index (graphs/index), keyed by the
file's path, size, mtime, inode, device and ctime: ctime changes on every write or truncation and cannot be
set back by the user, so a model edited in place with its size and mtime restored is hashed again, and the
inode tells a file moved in from elsewhere. A file changed less than RACY_NS ago is hashed each time and not
remembered (a second write within the filesystem's timestamp granularity could keep the same ctime). So the
first hit on an entry hashes its files (0.16 s for 160 MB of weights here, twice the 0.08 s such a hit's
explain takes otherwise; writing the entry hashes them too) and later hits only stat them. Changes that bypass
the filesystem (bit rot on the disk) are not seen once a hash is remembered.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import shutil
import stat
import tempfile
import time
import warnings
from functools import lru_cache
from pathlib import Path

from .cache import cache_dir, private_dir, untrusted
from .errors import FvGraphWarning

FORMAT = 2  # 2: meta.json records the key and the files' hashes
RACY_NS = 2 * 10**9
_HEX64 = re.compile(r"[0-9a-f]{64}")
_warned: set = set()


def _megabytes(name: str, default: float) -> int:
    """A size from the environment in MB; a value that is not a number >= 0 warns once and gives the default."""
    v = os.environ.get(name)
    if v is None or not v.strip():
        return int(default * 2**20)
    try:
        mb = float(v)
        if not math.isfinite(mb) or mb < 0:
            raise ValueError(v)
    except ValueError:
        warnings.warn(FvGraphWarning(f"{name}={v!r} is not a size in MB (a number >= 0); the default, {default:g} MB, "
                                     "is used"), stacklevel=2)
        return int(default * 2**20)
    return int(mb * 2**20)


# Graphs whose weights exceed this are not kept: writing their optimized copy (VGG-16 guided: 584 MB, 2.7 s)
# costs more than the lowering and optimization it would save (1.4 s in all there); FVGRAPH_CACHE_MAX_MB moves it
MAX_BYTES = _megabytes("FVGRAPH_CACHE_MAX_MB", 256)
# The cache as a whole stays under this: after each new entry the least recently used ones go
INDEX_ENTRIES = 4096  # remembered file hashes at most (trim_index)
TOTAL_BYTES = _megabytes("FVGRAPH_CACHE_TOTAL_MB", 2048)


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
    return {"format": FORMAT, "fvgraph": __version__, "code": code_fingerprint(),
            "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": numpy.__version__,
            "machine": platform.machine(), "cpu": hashlib.sha256(flags.encode()).hexdigest()[:16]}


def code_fingerprint() -> str:
    """A hash of fvgraph's own source files and rule presets: a checkout whose code changed under the same version
    number (an editable install, a patched copy) must not load graphs its old code lowered (a few ms, once)."""
    from .rules import presets_dir
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    presets = sorted((p for p in presets_dir().iterdir() if p.name.endswith(".toml")), key=lambda p: p.name)
    for f in sorted(root.rglob("*.py")) + presets:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _warn_once(path, message: str):
    if str(path) not in _warned:
        _warned.add(str(path))
        warnings.warn(FvGraphWarning(message), stacklevel=3)


def _trusted(path) -> bool:
    """Whether a folder of the cache is the user's own; when not, says so once and the cache is not used."""
    reason = untrusted(path)
    if reason is not None:
        _warn_once(path, f"the cache folder {path} {reason}: fvgraph does not use its disk cache of lowered graphs")
    return reason is None


def _private(*folders) -> bool:
    """Create the folders (each inside the one before) private when missing; whether all are the user's own."""
    for d in folders:
        private_dir(d)
        if not _trusted(d):
            return False
    return True


def root() -> Path | None:
    """The folder of the entries; None when the cache is off or not the user's own."""
    d = cache_dir()
    if d is None or not _trusted(d) or not _trusted(d / "graphs"):
        return None
    return d / "graphs"


def file_hash(path) -> str | None:
    """The sha256 of a file's bytes, remembered in the cache's index (see the module's docstring)."""
    base = root()
    return None if base is None else _digest(path, base / "index")


def _digest(path, index: Path) -> str | None:
    now = time.time_ns()
    try:
        st = os.stat(path)
    except OSError:
        return None
    fingerprint = (f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_dev}|"
                   f"{st.st_ctime_ns}")
    memo = index / hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
    try:
        with open(memo) as f:
            known = f.read(100).strip()
        if _HEX64.fullmatch(known) and _trusted(index):
            return known
    except (OSError, ValueError):
        pass  # not remembered, or unreadable: hashed again
    try:
        digest = _sha256(path)
        after = os.stat(path)
    except OSError:
        return None
    same = (after.st_size, after.st_mtime_ns, after.st_ino, after.st_ctime_ns) == \
        (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if same and now - st.st_ctime_ns > RACY_NS:
        try:
            if _private(index.parent.parent, index.parent, index):
                _write_atomic(memo, digest)
        except OSError:
            pass  # a read-only or full cache only costs speed
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


def _names(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _dtype(value) -> bool:
    import numpy as np
    if not isinstance(value, str):
        return False
    try:
        np.dtype(value)
    except (TypeError, ValueError):
        return False
    return True


def _values(rows) -> bool:
    """[name, dims or None, dtype] rows, as fvgraph.model._lowered_meta writes them."""
    return isinstance(rows, list) and all(
        isinstance(r, list) and len(r) == 3 and isinstance(r[0], str) and _dtype(r[2])
        and (r[1] is None or isinstance(r[1], list) and all(isinstance(d, (int, str)) and not isinstance(d, bool)
                                                             for d in r[1]))
        for r in rows)


def _meta_problem(meta, entry: Path) -> str | None:
    """What is wrong with an entry's description (the shape of everything its loader reads), or None."""
    if not isinstance(meta, dict):
        return f"its meta.json holds a {type(meta).__name__}, not a description"
    shape = {"output": lambda v: isinstance(v, str), "target": lambda v: v is None or isinstance(v, str),
             "layers": _names, "extras": _names, "applied": _names,
             "seed_inputs": lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
             "inputs": _values, "outputs": _values,
             "params": lambda v: isinstance(v, dict) and all(
                 isinstance(k, str) and isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                 and _dtype(p[1]) for k, p in v.items()),
             "key": lambda v: isinstance(v, str), "environment": lambda v: isinstance(v, dict),
             "files": lambda v: isinstance(v, dict) and "optimized.onnx" in v and all(
                 isinstance(k, str) and k == os.path.basename(k) and k not in ("", ".", "..", "meta.json")
                 and isinstance(f, dict) and isinstance(f.get("size"), int) and not isinstance(f["size"], bool)
                 and isinstance(f.get("sha256"), str) and _HEX64.fullmatch(f["sha256"]) for k, f in v.items())}
    bad = [k for k, ok in shape.items() if k not in meta or not ok(meta[k])]
    if bad:
        return f"its meta.json lacks or garbles {', '.join(bad)}"
    if meta["key"] != entry.name:
        return f"belongs to another key ({meta['key'][:40]}: swapped or copied from another entry)"
    if meta["environment"] != environment():
        return "was made by another version of fvgraph, onnxruntime or onnx, or on another CPU"
    return None


def _files_problem(entry: Path, files: dict) -> str | None:
    """What differs between an entry's files and what was written, or None."""
    try:
        present = {p.name for p in entry.iterdir()} - {"meta.json"}
    except OSError as e:
        return f"cannot be listed ({e.strerror})"
    if present != set(files):
        missing, extra = sorted(set(files) - present), sorted(present - set(files))
        return "holds other files than were written (" + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) + ([f"extra {', '.join(extra)}"] if extra else [])) \
            + ")"
    for name, f in sorted(files.items()):
        try:
            st = os.stat(entry / name)
        except OSError as e:
            return f"cannot read {name} ({e.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return f"holds a {name} that is not a file"
        if st.st_size != f["size"]:
            return f"holds a {name} of {st.st_size} bytes; {f['size']} were written"
        if _digest(entry / name, entry.parent / "index") != f["sha256"]:
            return f"holds a {name} whose content is not what was written"
    return None


def read(entry: Path) -> dict | None:
    """The entry's description when it is complete, the user's own, and its files are those written, else None
    (a bad entry is removed with one warning line, then rebuilt by the caller)."""
    entry = Path(entry)
    if not os.path.lexists(entry):
        return None
    reason = untrusted(entry)
    if reason is None:
        try:
            with open(entry / "meta.json", "rb") as f:
                meta = json.loads(f.read())
        except FileNotFoundError:
            meta, reason = None, "has no meta.json"
        except (OSError, ValueError) as e:
            meta, reason = None, f"has an unreadable meta.json ({str(e)[:80]})"
    if reason is None:
        reason = _meta_problem(meta, entry) or _files_problem(entry, meta["files"])
    if reason is not None:
        discard(entry, reason)
        return None
    try:
        os.utime(entry / "meta.json")  # used now: the last to be evicted
    except OSError:
        pass
    return meta


def discard(entry: Path, reason: str):
    """Remove a bad entry (renamed aside first, so no reader sees it half-removed), saying why in one line."""
    warnings.warn(FvGraphWarning(f"the disk cache entry {entry} {reason}: it is not used, the graph is rebuilt"),
                  stacklevel=3)
    aside = entry.parent / f".{entry.name}-bad-{os.getpid()}-{time.time_ns()}"
    try:
        os.rename(entry, aside)
    except OSError:
        aside = entry
    if os.path.isdir(aside) and not os.path.islink(aside):
        shutil.rmtree(aside, ignore_errors=True)
    else:
        try:
            os.unlink(aside)
        except OSError:
            pass


def staging(entry: Path) -> Path | None:
    """A private folder to write an entry into (then `publish`)."""
    try:
        if not _private(entry.parent.parent, entry.parent):
            return None
        return Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}-"))
    except OSError:
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def publish(tmp: Path, entry: Path, meta: dict):
    """Record the key, the files' sizes and hashes and the description, and move the folder into place; another
    process's entry wins a race."""
    try:
        files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())
                 if p.name != "meta.json"}
        (tmp / "meta.json").write_text(json.dumps({**meta, "environment": environment(), "key": entry.name,
                                                   "files": files}))
        os.rename(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    evict(entry.parent, TOTAL_BYTES)


def evict(base: Path, limit: int, stale_s: float = 3600):
    """Remove the least recently used entries until the entries under `base` take at most `limit` bytes; and
    the leftovers of writers killed more than `stale_s` ago (hidden staging or discarded folders)."""
    entries = []
    now = time.time()
    for e in base.iterdir() if base.exists() else []:
        if not e.is_dir() or e.name == "index":
            continue
        if e.name.startswith("."):
            try:
                if now - e.stat().st_mtime > stale_s:
                    shutil.rmtree(e, ignore_errors=True)
            except OSError:
                pass
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
    trim_index(base / "index")


def trim_index(index: Path, keep: int = INDEX_ENTRIES):
    """The index of remembered hashes keeps its `keep` most recently written records (one small file per
    hashed file version: without a bound it grows with every model and entry ever seen)."""
    try:
        memos = [(m.stat().st_mtime, m) for m in index.iterdir() if m.is_file()]
    except OSError:
        return
    if len(memos) > keep:
        for _, m in sorted(memos)[:len(memos) - keep]:
            try:
                m.unlink()
            except OSError:
                pass
