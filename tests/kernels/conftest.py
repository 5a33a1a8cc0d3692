"""Every kernel test runs against both implementations: ids ``py`` (the twin) and ``c``."""

from __future__ import annotations

import importlib

import pytest

from dicomaccel._compat import NO_EXTENSIONS, REQUIRE_EXTENSIONS


def _implementations(name: str) -> list:
    params = [pytest.param(importlib.import_module(f"dicomaccel._{name}_py"), id="py")]
    if not NO_EXTENSIONS:
        try:
            compiled = importlib.import_module(f"dicomaccel._{name}_c")
        except ImportError:
            if REQUIRE_EXTENSIONS:
                raise
        else:
            params.append(pytest.param(compiled, id="c", marks=pytest.mark.c_extension))
    return params


@pytest.fixture(params=_implementations("multipart"))
def multipart_impl(request):
    return request.param


@pytest.fixture(params=_implementations("frames"))
def frames_impl(request):
    return request.param


@pytest.fixture(params=_implementations("encaps"))
def encaps_impl(request):
    return request.param
