"""What every harness shares: the two kernel implementations, and one way to compare them.

A differential harness calls the pure-Python twin and the compiled module on the same input
and fails (an uncaught AssertionError, which atheris reports as a crash with its input) when
they differ in result, exception type, message or byte offset. Expected rejections are the
documented exceptions (``ParseError`` and its subclasses, ``ValueError``); anything else
escaping a harness is a bug, and atheris reports that too.
"""

from __future__ import annotations

import os
import sys
from array import array

from dicomaccel.errors import ParseError
from dicomaccel.testing.kernels import implementations

EXPECTED = (ParseError, ValueError)


def twins(kernel: str):
    """(twin, compiled or None) of ``kernel``."""
    found = implementations(kernel)
    return found["py"], found.get("c")


def _plain(value):
    """A comparable form of a kernel result: buffers and arrays as bytes or lists."""
    if isinstance(value, (memoryview, bytearray)):
        return bytes(value)
    if isinstance(value, array):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def outcome(call):
    """``("ok", result)`` or ``("error", type name, message, offset)`` of ``call()``; an
    exception outside :data:`EXPECTED` propagates."""
    try:
        return "ok", _plain(call())
    except EXPECTED as exc:
        return "error", type(exc).__name__, str(exc), getattr(exc, "offset", None)


def same(kernel: str, call):
    """Run ``call(module)`` on both implementations and require the same outcome."""
    twin, compiled = twins(kernel)
    expected = outcome(lambda: call(twin))
    if compiled is not None:
        got = outcome(lambda: call(compiled))
        assert got == expected, f"{kernel}: compiled {got!r:.300} != twin {expected!r:.300}"
    return expected


def main(test_one_input, argv=None) -> None:
    """Run a harness under atheris (arguments as for libFuzzer: corpus directories,
    ``-max_total_time=N``, ``-runs=N``)."""
    import atheris

    atheris.Setup(sys.argv if argv is None else argv, test_one_input)
    atheris.Fuzz()


SEEDS = os.path.join(os.path.dirname(__file__), "corpus")
