"""Every failure fvgraph reports is an FvGraphError: one readable message saying what, where and what to do.

The CLI prints the message alone and exits nonzero; Python callers catch FvGraphError (or a subclass).
"""


class FvGraphError(Exception):
    """Base of all errors fvgraph raises on purpose."""


class ModelLoadError(FvGraphError):
    """The file or bytes are not a readable ONNX model (missing, truncated, corrupt)."""


class UnsupportedModelError(FvGraphError):
    """The model is valid ONNX but uses ops or attributes fvgraph does not implement."""


class InputError(FvGraphError):
    """An input array, a target, a layer name or an option given by the caller is wrong."""


class ExecutionError(FvGraphError):
    """A node failed while running; the message names the node and its op type."""


class DeviceError(FvGraphError):
    """The requested device (CuPy / GPU) is not available."""


class RuleError(FvGraphError):
    """A propagation rule or rule preset is unknown or malformed."""


class OptionError(RuleError, InputError):
    """An unknown method or option, or a value out of its range (fvgraph.methods.registry): one line naming
    the valid choices and ranges, the same from the API, the command line and serve."""


class FvGraphWarning(UserWarning):
    """Something worth knowing that is not an error (a unit that stayed dead); the CLI prints it on one line."""


def refuse_overwrite(path, overwrite: bool, other_out: bool = False):
    """Never overwrite a user's file unless asked: an InputError naming the file when it exists. Checked
    before the work, so a refusal costs nothing."""
    from pathlib import Path
    if Path(path).exists() and not overwrite:
        hint = ", or choose another --out" if other_out else ""
        raise InputError(f"{path} exists; not overwriting it (pass --overwrite{hint})")
