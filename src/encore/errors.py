"""Exception types shared by every layer. Front-ends map these to exit codes, HTTP statuses and UI messages."""

from __future__ import annotations


class EncoreError(Exception):
    """Base class for every error Encore raises on purpose."""


class InvalidRequest(EncoreError, ValueError):
    """A request field is invalid. `field` is a dotted path such as ``task.start_s``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CheckpointError(EncoreError):
    """A checkpoint file is missing, truncated or incompatible. Names the file and, if known, the tensor."""

    def __init__(self, path: str, message: str, tensor: str | None = None) -> None:
        where = f"{path} [{tensor}]" if tensor else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.tensor = tensor


class AudioError(EncoreError):
    """An audio file cannot be read or written. Names the file."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = str(path)


class NumericalError(EncoreError):
    """NaN or Inf appeared in latents or audio; nothing is written."""


class Cancelled(EncoreError):
    """The caller's cancel token fired; nothing is written."""
