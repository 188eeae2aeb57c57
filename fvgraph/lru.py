"""A bounded cache: lowered graphs, their sessions and executors, the server's images and maps."""
from __future__ import annotations

from collections import OrderedDict


class LRU(OrderedDict):
    """A dict that keeps its `size` most recently stored or used entries."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value

    def use(self, key, make):
        """The entry for key (made by make() when missing), now the most recently used."""
        if key not in self:
            return self.put(key, make())
        self.move_to_end(key)
        return self[key]
