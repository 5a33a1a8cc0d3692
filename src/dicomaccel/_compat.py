"""What depends on the runtime: which kernel implementation runs (the compiled module or its
pure-Python twin), and whether the transports' ``writelines()`` may be used.

``DICOMACCEL_NO_EXTENSIONS=1`` selects the twins; ``DICOMACCEL_REQUIRE_EXTENSIONS=1`` turns a
missing compiled module into an ImportError instead of a silent fallback (CI sets it).
Flags are parsed strictly: "0", "" and "off" mean off (aiohttp's ``bool(os.environ.get())``
reads "0" as on; we do not).
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from types import ModuleType


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


NO_EXTENSIONS = env_flag("DICOMACCEL_NO_EXTENSIONS") or platform.python_implementation() != "CPython"
REQUIRE_EXTENSIONS = env_flag("DICOMACCEL_REQUIRE_EXTENSIONS") and not NO_EXTENSIONS


# CVE-2024-12254: CPython 3.12 before 3.12.9 and 3.13 before 3.13.2 have a selector-transport
# writelines() that can exhaust memory; join the batch there instead (aiohttp does the same).
# uvloop's own transport is unaffected, but the protocols also run on the stdlib loop.
WRITELINES_SAFE = not (
    (3, 12) <= sys.version_info[:3] < (3, 12, 9) or (3, 13) <= sys.version_info[:3] < (3, 13, 2)
)


def load_kernel(name: str) -> ModuleType:
    """Return ``dicomaccel._<name>_c`` if usable, else ``dicomaccel._<name>_py``."""
    if not NO_EXTENSIONS:
        try:
            return importlib.import_module(f"dicomaccel._{name}_c")
        except ImportError:
            if REQUIRE_EXTENSIONS:
                raise
    return importlib.import_module(f"dicomaccel._{name}_py")
