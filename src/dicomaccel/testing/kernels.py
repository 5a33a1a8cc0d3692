"""Which kernel modules a test (or a benchmark) runs against."""

from __future__ import annotations

import importlib
from types import ModuleType

from .._compat import NO_EXTENSIONS, REQUIRE_EXTENSIONS


def implementations(kernel: str) -> dict[str, ModuleType]:
    """The implementations of ``kernel`` (``"multipart"``, ``"frames"``, ``"encaps"``, ``"walk"``)
    in use here.

    ``{"py": dicomaccel._<kernel>_py, "c": dicomaccel._<kernel>_c}``, twin first. ``"c"`` is
    left out with ``DICOMACCEL_NO_EXTENSIONS=1`` and when the module is not built; with
    ``DICOMACCEL_REQUIRE_EXTENSIONS=1`` a module that is not built raises ImportError instead.
    """
    found = {"py": importlib.import_module(f"dicomaccel._{kernel}_py")}
    if not NO_EXTENSIONS:
        try:
            found["c"] = importlib.import_module(f"dicomaccel._{kernel}_c")
        except ImportError:
            if REQUIRE_EXTENSIONS:
                raise
    return found
