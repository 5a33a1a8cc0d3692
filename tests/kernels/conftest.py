"""Every kernel test runs against both implementations: ids ``py`` (the twin) and ``c``."""

from __future__ import annotations

import pytest

from dicomaccel.testing import implementations


def _implementations(name: str) -> list:
    return [pytest.param(module, id=key, marks=[pytest.mark.c_extension] if key == "c" else [])
            for key, module in implementations(name).items()]


@pytest.fixture(params=_implementations("multipart"))
def multipart_impl(request):
    return request.param


@pytest.fixture(params=_implementations("frames"))
def frames_impl(request):
    return request.param


@pytest.fixture(params=_implementations("encaps"))
def encaps_impl(request):
    return request.param


@pytest.fixture(params=_implementations("walk"))
def walk_impl(request):
    return request.param
