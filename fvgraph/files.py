"""Files written whole or not at all, and folder runs that never overwrite what they did not write.

`write_atomic(path, write)` fills a private temporary file beside the target, which is then renamed over it,
so an interrupted run (or a concurrent one) never leaves a half-written file that a resumed run would take as
done. Shared by every writer of maps, models, reports, banks and cache entries.

`RunState` is a folder command's record of itself in its output folder (explain over folders, examples): the
model's sha256, the options, the files the run claimed (checked absent, or --overwrite) and the inputs it
finished, with their content hashes. A resume recognizes its own outputs; a file it did not claim, or a state
of another model or other options, is refused (--overwrite starts over). Output names come from `safe_part`
and `unique_names`, never from layer or image names used as paths."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

from .errors import InputError


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


# write_atomic's temporary names: "." + target name + "." + mkstemp's 8 characters + ".part" + target suffix
_PART = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.part(\.[^.]*)?$")


def clean_parts(folder, older_than: float | None = None) -> int:
    """Remove write_atomic's leftovers (a killed run's `.NAME.xxxxxxxx.part.EXT`) in a folder; with older_than
    (seconds), only those at least that old (a shared cache, where another process may be writing now)."""
    n = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        if not (e.is_file(follow_symlinks=False) and _PART.match(e.name)):
            continue
        try:
            if older_than is not None and time.time() - e.stat().st_mtime < older_than:
                continue
            os.unlink(e.path)
            n += 1
        except OSError:
            pass
    return n


def sha256_file(path) -> str:
    """The sha256 of a file's bytes: what cache keys and resumes compare (sizes and dates miss a retrained
    model of the same size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def short_hash(text: str) -> str:
    return hashlib.sha256(str(text).encode()).hexdigest()[:8]


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,@~-]")


def safe_part(text, fallback="_") -> str:
    """One file-name component from any text (a layer name like '/../../x', a label): separators and other
    unsafe characters become '_', no leading dot, never empty, at most 120 characters (long or changed text
    keeps a hash of the original)."""
    text = str(text)
    out = _UNSAFE.sub("_", text).lstrip(".") or fallback
    if len(out) > 120:
        out = out[:100] + "~" + short_hash(text)
    return out


def unique_names(names, keys, force=None) -> list[str]:
    """The names, with '~' and a hash of its key appended to every name that would share a file name with
    another (also ignoring case: macOS and Windows folders), that contains '~' itself or that `force` marks
    (a name that could be read two ways), so that distinct keys never map to one output name. Raises when
    that still fails (a hash collision: never in practice)."""
    names, keys = list(names), list(keys)
    force = list(force) if force is not None else [False] * len(names)
    folded = {}
    for n in names:
        folded[n.casefold()] = folded.get(n.casefold(), 0) + 1
    out = [n + "~" + short_hash(k) if folded[n.casefold()] > 1 or "~" in n or f else n
           for n, k, f in zip(names, keys, force)]
    seen = {}
    for n, k in zip(out, keys):
        if n.casefold() in seen and seen[n.casefold()] != k:
            raise InputError(f"{seen[n.casefold()]} and {k} would write the same output name {n!r}; rename one")
        seen[n.casefold()] = k
    return out


def fingerprint(obj):
    """A JSON-able, canonical form of options (arrays by their hash) for a RunState to compare."""
    import dataclasses

    import numpy as np
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return {"array": hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest(), "shape": list(obj.shape),
                "dtype": str(obj.dtype)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"type": type(obj).__name__,
                **{f.name: fingerprint(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        return {str(k): fingerprint(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [fingerprint(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return repr(obj)


class RunState:
    """A folder run's state file in its output folder, `fvgraph-COMMAND.state.json` (written atomically):
    {"schema", "command", "model_sha256", "options", "claimed": [file names], "done": {input: {"sha256",
    "outputs"}}, "failed": {input: reason}, "complete"}. See the module's docstring."""

    SCHEMA = "fvgraph.run/1"

    def __init__(self, out, command: str, model_path, options, overwrite: bool = False):
        self.out = Path(out)
        self.path = self.out / f"fvgraph-{command}.state.json"
        self.overwrite = overwrite
        self.model_sha256 = sha256_file(model_path) if model_path and os.path.isfile(model_path) else None
        self.header = {"schema": self.SCHEMA, "command": command, "model_sha256": self.model_sha256,
                       "options": json.loads(json.dumps(fingerprint(options)))}
        self.claimed, self.done, self.failed, self.complete = set(), {}, {}, False
        self._next_save = 0.0
        clean_parts(self.out)
        if not self.path.exists():
            return
        try:
            saved = json.loads(self.path.read_text())
            same = all(saved.get(k) == v for k, v in self.header.items())
        except (OSError, ValueError):
            saved, same = {}, False
        if not same and not overwrite:
            what = "another model" if saved.get("model_sha256") != self.model_sha256 else "other options"
            raise InputError(f"{self.out}/ holds a {command} run of {what} ({self.path.name}); pass --overwrite to "
                             "start over, or choose another --out")
        self.claimed = set(saved.get("claimed", []))  # ours, whatever run of ours wrote them
        if same:
            self.done, self.failed = dict(saved.get("done", {})), dict(saved.get("failed", {}))
            self.complete = bool(saved.get("complete"))

    def claim(self, names):
        """Claim output files (names inside the folder) before any work: one that exists and that no run of
        ours wrote is refused, naming it (--overwrite replaces it). Saves the state."""
        names = [str(n) for n in names]
        if not self.overwrite:
            theirs = [n for n in names if n not in self.claimed and (self.out / n).exists()]
            if theirs:
                more = f" and {len(theirs) - 1} other file(s)" if len(theirs) > 1 else ""
                raise InputError(f"{self.out / theirs[0]}{more} exist(s) and this run did not write them; not "
                                 "overwriting (pass --overwrite, or choose another --out)")
        self.claimed.update(names)
        self.save()

    def is_done(self, key, sha256) -> bool:
        """Finished before, on the same content, and all its outputs still there."""
        d = self.done.get(key)
        return bool(d) and d.get("sha256") == sha256 and all((self.out / n).exists() for n in d.get("outputs", []))

    def mark_done(self, key, sha256, outputs, save=True):
        self.done[key] = {"sha256": sha256, "outputs": [str(n) for n in outputs]}
        self.failed.pop(key, None)
        self.complete = False
        if save:
            self.save(throttle=True)

    def mark_failed(self, key, reason, save=True):
        self.failed[key] = str(reason)
        self.done.pop(key, None)
        if save:
            self.save(throttle=True)

    def finish(self):
        self.complete = True
        self.save()

    def save(self, throttle=False):
        """Written whole (write_text); with throttle, not again before ten times the last save's duration
        has passed (at most a tenth of the time goes to the state however large it grows; a kill loses only
        that much progress, and what it loses is claimed, so it is redone, never refused)."""
        if throttle and time.monotonic() < self._next_save:
            return
        t0 = time.monotonic()
        write_text(self.path, json.dumps({**self.header, "claimed": sorted(self.claimed), "done": self.done,
                                          "failed": self.failed, "complete": self.complete}))
        self._next_save = time.monotonic() + 10 * (time.monotonic() - t0)


def failure_line(failed: dict, limit: int = 8) -> str:
    """'skipped 2 unreadable image(s): a.png (reason), b.jpg (reason)' for the end of a folder run."""
    items = [f"{k} ({str(v).removeprefix(str(k) + ': ')})" for k, v in sorted(failed.items())]
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return f"skipped {len(items)} unreadable image(s): {', '.join(items[:limit])}{more}"
