"""Image limits for the span of one command: fvgraph.image's limits (and the environment variables spawned
workers read) set while it runs and restored after, so a command run in-process (as tests do) leaves none."""
from __future__ import annotations

import math
import os

from .errors import InputError

# (keyword, command-line flag, fvgraph.image.set_image_limits keyword, environment variable, an example)
IMAGE_LIMITS = (("max_image_pixels", "--max-image-pixels", "max_pixels", "FVGRAPH_MAX_IMAGE_PIXELS", "1e8"),
                ("max_image_aspect", "--max-image-aspect", "max_aspect", "FVGRAPH_MAX_IMAGE_ASPECT", "64"))


class ImageLimits:
    """with ImageLimits(max_image_pixels="1e8", max_image_aspect=None): ... -- texts as the command line gives
    them (None: unchanged); one that is not a number of at least 1 is one InputError line naming the flag."""

    def __init__(self, **texts):
        self.given = {}
        for attr, flag, key, var, example in IMAGE_LIMITS:
            text = texts.get(attr)
            if text is None:
                continue
            try:
                v = float(str(text).strip())
            except ValueError:
                v = math.nan
            if not (math.isfinite(v) and v >= 1):
                raise InputError(f"{flag} {text!r} is not a number of at least 1 (e.g. {flag} {example})")
            self.given[key] = (int(v) if key == "max_pixels" else v, var)

    def __enter__(self):
        from . import image
        self.saved = dict(image._SET), {var: os.environ.get(var) for _, var in self.given.values()}
        if self.given:
            image.set_image_limits(**{key: v for key, (v, _) in self.given.items()})
            os.environ.update({var: str(v) for v, var in self.given.values()})  # spawned workers read these
        return self

    def __exit__(self, *exc):
        from . import image
        limits, env = self.saved
        image._SET.clear()
        image._SET.update(limits)
        for var, old in env.items():
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old
        return False
