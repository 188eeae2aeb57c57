"""Where fvgraph keeps what it builds once and reuses across runs (patch banks): $FVGRAPH_CACHE, else
$XDG_CACHE_HOME/fvgraph, else ~/.cache/fvgraph. FVGRAPH_CACHE set to "off" (or "0", or empty) disables it."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    v = os.environ.get("FVGRAPH_CACHE")
    if v is not None:
        return None if v.strip().lower() in ("", "0", "off", "no", "false") else Path(v)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fvgraph"
