"""The msnl error hierarchy.

Every error a user can cause carries a message that says which file, what was expected, what
was found and what to do. Code catches `MsnlError` to record one bad subject and go on.
"""

from __future__ import annotations

from pathlib import Path


class MsnlError(Exception):
    """Base of every error msnl raises on purpose."""


class MsnlWarning(UserWarning):
    """Base of every warning msnl emits."""


class InputError(MsnlError):
    """A user's input is unusable. `path` names the offending file or folder, when there is one."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


class BadScanError(InputError):
    """A scan file cannot be read, or its header or voxels cannot be trusted."""


class ManifestError(InputError):
    """A cohort source (BIDS folder or CSV manifest) is malformed."""


class UnsafeIdentifierError(ManifestError):
    """A subject or visit ID that would be unsafe as a storage key (for example `..` or `/`)."""


class StoreError(MsnlError):
    """A store is missing, not an msnl store, or not in the state an operation needs."""


class QualityControlError(MsnlError):
    """A visit pair failed quality control (for example a registration that plainly failed).

    `status` is a short code stored with the results; `figures` holds the measured values.
    """

    def __init__(self, status: str, message: str, figures: dict | None = None) -> None:
        self.status = status
        self.figures = dict(figures or {})
        super().__init__(message)
