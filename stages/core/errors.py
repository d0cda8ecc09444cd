"""One error type for bad input, so every stage fails the same readable way."""
from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Raised when an input file or parameter is malformed.

    The message always names the file, where in it (row, key, column) and what was expected,
    because the user has to fix the file, not read a traceback.
    """

    def __init__(self, path: str | Path | None, where: str | None, expected: str, got: object = None):
        self.path = str(path) if path is not None else None
        self.where = where
        self.expected = expected
        self.got = got
        parts = []
        if self.path:
            parts.append(self.path)
        if where:
            parts.append(_one_line(where))
        msg = ": ".join(parts) + (": " if parts else "") + f"expected {_one_line(expected)}"
        if got is not None:
            text = repr(got)
            msg += f", got {text[:200]}"
        super().__init__(msg)


def _one_line(text: object) -> str:
    """Newlines (a library's multi-line message) folded: the error is always one line."""
    return " ".join(str(text).split())
