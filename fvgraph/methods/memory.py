"""How much memory the methods that run many copies may use: what the machine has free, and what one sample's
forward pass holds. Shared by occlusion and the sampling methods (batches under a cap)."""
from __future__ import annotations

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


def bytes_per_sample(model, x1, value) -> int:
    """Memory of one sample's forward pass: the sum of its values' sizes (an upper bound on what is live)."""
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
