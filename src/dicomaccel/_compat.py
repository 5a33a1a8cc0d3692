"""Which kernel implementation runs: the compiled module or its pure-Python twin.

``DICOMACCEL_NO_EXTENSIONS=1`` selects the twins; ``DICOMACCEL_REQUIRE_EXTENSIONS=1`` turns a
missing compiled module into an ImportError instead of a silent fallback (CI sets it).
Flags are parsed strictly: "0", "" and "off" mean off (aiohttp's ``bool(os.environ.get())``
reads "0" as on; we do not).
"""

from __future__ import annotations

import importlib
import os
import platform
from types import ModuleType


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


NO_EXTENSIONS = env_flag("DICOMACCEL_NO_EXTENSIONS") or platform.python_implementation() != "CPython"
REQUIRE_EXTENSIONS = env_flag("DICOMACCEL_REQUIRE_EXTENSIONS") and not NO_EXTENSIONS


def load_kernel(name: str) -> ModuleType:
    """Return ``dicomaccel._<name>_c`` if usable, else ``dicomaccel._<name>_py``."""
    if not NO_EXTENSIONS:
        try:
            return importlib.import_module(f"dicomaccel._{name}_c")
        except ImportError:
            if REQUIRE_EXTENSIONS:
                raise
    return importlib.import_module(f"dicomaccel._{name}_py")
