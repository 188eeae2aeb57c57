"""How much memory the methods that run many copies may use: what the machine has free, and what one sample's
forward pass holds. Shared by occlusion and the sampling methods (batches under a cap)."""
from __future__ import annotations

import weakref

import numpy as np


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


_SIZES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def bytes_per_sample(model, x1, value) -> int:
    """Memory of one sample's forward pass: the sum of its values' sizes (an upper bound on what is live);
    computed once per model and input signature (it walks every value of the shape table)."""
    key = (tuple(np.shape(x1)), str(np.asarray(x1).dtype))
    kept = _SIZES.setdefault(model, {})
    if key not in kept:
        kept[key] = _bytes_per_sample(model, np.asarray(x1))
    return kept[key]


def _bytes_per_sample(model, x1) -> int:
    feeds = {model.graph.input_names()[0]: x1}
    table = model.shape_table(feeds)
    if any(d is None for d in table.dims.values()):
        table = model.shape_table(feeds, measured=True)
    total = x1.nbytes
    for name, dims in table.dims.items():
        if name in model.graph.initializers or not dims or dims[0] != "N":
            continue
        count = int(np.prod([d if isinstance(d, int) else 1 for d in dims[1:]]))
        total += count * table.dtypes.get(name, np.dtype(np.float32)).itemsize
    return total


def copies_per_batch(model, x1, value, total, batch_size=None, memory=None, most=None) -> int:
    """How many copies of one sample go through the model at once: the caller's batch_size, else as many of the
    `total` as fit a quarter of the free memory (or `memory` bytes) at bytes_per_sample each, and at most `most`."""
    if batch_size is None:
        per = bytes_per_sample(model, x1, value)
        cap = memory if memory is not None else available_memory() // 4
        batch_size = int(max(1, min(total, most or total, cap // max(per, 1))))
    if batch_size < 1:
        from ..errors import InputError
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    return int(batch_size)
