"""What a command's target options name: a class, an output element or region, or a unit, each one way only
(the options that would contradict each other are refused with one line naming them)."""
from __future__ import annotations

from .errors import InputError


def class_index(text, model=None):
    """--target's text as a class index (None: the predicted class): an index, or a label of the model's
    (fvgraph.model.Model.class_of)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        if model is None:
            raise InputError(f"--target takes a class index or label, got {text!r} (use --layer/--channel for "
                             "units)") from None
        return model.class_of(text)


def output_target(model, index=None, mask=None, output=None, channel=None):
    """fv.OutputTarget from an index text ("9,2049", no batch axis) or a mask file (with the output it reads
    and a channel of it), or None when neither is given."""
    if index is None and mask is None:
        if output or channel is not None:
            raise InputError("--target-output and --target-channel go with --target-index or --target-mask")
        return None
    from .explanation import OutputTarget
    if index is not None and mask is not None:
        raise InputError("give --target-index or --target-mask, not both")
    if index is not None:
        try:
            idx = tuple(int(v) for v in index.split(","))
        except ValueError:
            raise InputError(f"--target-index takes integers separated by commas (no batch axis), got {index!r}") \
                from None
        return OutputTarget(index=idx, output=output)
    from .methods.attribution import output_mask
    return OutputTarget(mask=output_mask(model, mask, output, channel), output=output)


def class_or_output(model, target=None, **output):
    """An output element or region (index=/mask=, see output_target), or a class (target), or None."""
    out = output_target(model, **output)
    if out is not None:
        if target is not None:
            raise InputError("--target-index/--target-mask replace --target; give one of them")
        return out
    return class_index(target, model)


def any_target(model, target=None, layer=None, unit_channel=None, **output):
    """A unit (layer, unit_channel), an output element or region, or a class."""
    if layer:
        if output.get("index") is not None or output.get("mask") is not None or target is not None:
            raise InputError("--layer/--channel name a unit, which replaces --target, --target-index and "
                             "--target-mask; give one of them")
        from .explanation import Unit
        return Unit(layer, unit_channel)
    return class_or_output(model, target, **output)
