"""Build the Cython kernels: ext/dicomaccel/_*_c.pyx -> dicomaccel._*_c.

Environment switches (all parsed strictly: 1/true/yes/on mean on, anything else off):

DICOMACCEL_DEBUG=1        bounds/wraparound checks back on, linetrace, -O0 -g, DICOMACCEL_DEBUG macro
DICOMACCEL_SANITIZE=1     add AddressSanitizer and UBSan (implies a debug build)
DICOMACCEL_NO_EXTENSIONS=1  build a pure-Python package (the twins are used at run time)
DICOMACCEL_KERNELS=a,b    build only these kernels (multipart, frames, encaps, walk); default: all
"""
import os

from setuptools import Extension, setup

KERNELS = ("multipart", "frames", "encaps", "walk")


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _extensions():
    if _flag("DICOMACCEL_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize

    sanitize = _flag("DICOMACCEL_SANITIZE")
    debug = sanitize or _flag("DICOMACCEL_DEBUG")
    wanted = os.environ.get("DICOMACCEL_KERNELS", "").strip()
    names = [k.strip() for k in wanted.split(",") if k.strip()] if wanted else KERNELS
    unknown = set(names) - set(KERNELS)
    if unknown:
        raise SystemExit(f"DICOMACCEL_KERNELS: unknown kernels {sorted(unknown)}")

    # Safety directives live here, never in .pyx headers (a header would override the debug build).
    directives = {
        "language_level": 3,
        "embedsignature": True,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": not debug,
        "freethreading_compatible": True,
    }
    cflags = ["-O0", "-g", "-UNDEBUG", "-DDICOMACCEL_DEBUG=1"] if debug else ["-O3"]
    cflags += ["-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
    ldflags = []
    if debug:
        directives["linetrace"] = True
        cflags.append("-DCYTHON_TRACE_NOGIL=1")
    if sanitize:
        cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address,undefined"]

    exts = [
        Extension(
            f"dicomaccel._{name}_c",
            [f"ext/dicomaccel/_{name}_c.pyx"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
        for name in names
    ]
    return cythonize(
        exts,
        include_path=["ext"],
        compiler_directives=directives,
        annotate=debug,
    )


setup(ext_modules=_extensions())
