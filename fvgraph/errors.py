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


class FvGraphWarning(UserWarning):
    """Something worth knowing that is not an error (a unit that stayed dead); the CLI prints it on one line."""
