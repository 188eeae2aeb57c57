"""Where fvgraph keeps what it builds once and reuses across runs (patch banks): $FVGRAPH_CACHE, else
$XDG_CACHE_HOME/fvgraph, else ~/.cache/fvgraph. FVGRAPH_CACHE set to "off" (or "0", or empty) disables it.

What another user could write is not the user's own: `untrusted` says why a cache folder must not be used
(POSIX: owned by another user, or writable by group or others without the sticky bit), and `private_dir`
creates fvgraph's own folders readable and writable by their owner alone, whatever the umask."""
from __future__ import annotations

import os
import stat
from pathlib import Path


def cache_dir() -> Path | None:
    v = os.environ.get("FVGRAPH_CACHE")
    if v is not None:
        return None if v.strip().lower() in ("", "0", "off", "no", "false") else Path(v)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fvgraph"


def _uid():
    return os.getuid() if hasattr(os, "getuid") else None


def untrusted(path) -> str | None:
    """Why the folder at `path` must not be trusted, as the end of a sentence ("is owned by ..."), or None (also
    when it does not exist yet: fvgraph creates it private). Without POSIX owners (Windows) there is no check."""
    uid = _uid()
    if uid is None:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if st.st_uid != uid:
        return f"is owned by another user (uid {st.st_uid}, you are {uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        return (f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o}; `chmod go-w {path}` makes it "
                "private)")
    return None


def private_dir(path) -> Path:
    """Create `path` (its parents as usual) with mode 0700 when it does not exist; OSError when it cannot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    return path
