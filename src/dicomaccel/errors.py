"""Exceptions shared by the kernels and the services."""

from __future__ import annotations


class ParseError(ValueError):
    """Malformed input. ``offset`` is the absolute byte offset where parsing stopped."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.message = message
        self.offset = offset

    def __reduce__(self):  # keep pickling (process pools, pytest-xdist) working
        return (type(self), (self.message, self.offset))


class LimitExceeded(ParseError):
    """Well-formed so far, but larger than a configured limit allows (too many parts, a header
    block too long). A service answers it as a size limit (HTTP 413, RFC 9110 §15.5.14), not as
    malformed syntax (400)."""
