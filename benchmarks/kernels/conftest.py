"""Fixtures of the kernel benchmarks: the implementation under test, and the workloads.

``impl`` is the one fixture over both implementations: each benchmark module names its kernel
(``KERNEL = "multipart"``), and every test asking for ``impl`` runs once per implementation
that :func:`dicomaccel.testing.kernels.implementations` reports here, id ``compiled`` or
``twin`` (only ``twin`` with ``DICOMACCEL_NO_EXTENSIONS=1``). Workloads are built once per
session: the big ones take seconds to build and hundreds of MB to hold.
"""

from __future__ import annotations

import dataclasses

import pytest

from dicomaccel.testing.kernels import implementations

from . import workloads as w

_IDS = {"c": "compiled", "py": "twin"}
_KEYS = {v: k for k, v in _IDS.items()}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "impl" in metafunc.fixturenames:
        found = implementations(metafunc.module.KERNEL)
        names = [_IDS[key] for key in ("c", "py") if key in found]  # compiled first
        metafunc.parametrize("impl", names, indirect=True, ids=names)


@pytest.fixture
def impl(request: pytest.FixtureRequest):
    """The kernel module (``dicomaccel._<kernel>_c`` or ``_py``) this test runs on."""
    return implementations(request.module.KERNEL)[_KEYS[request.param]]


# --- workloads, built once --------------------------------------------------------------------

@pytest.fixture(scope="session")
def ct_body() -> w.Body:
    return w.ct_body()


@pytest.fixture(scope="session")
def near_miss_body() -> w.Body:
    return w.near_miss_body()


@pytest.fixture(scope="session")
def small_parts_body() -> w.Body:
    return w.small_parts_body()


@pytest.fixture(scope="session")
def mid_chunk(ct_body: w.Body) -> bytes:
    return w.mid_part_chunk(ct_body)


@pytest.fixture(scope="session")
def native_instance(tmp_path_factory: pytest.TempPathFactory) -> w.Instance:
    return w.write_native_instance(tmp_path_factory.mktemp("frames") / "native.dcm")


@pytest.fixture(scope="session")
def one_bit_instance(tmp_path_factory: pytest.TempPathFactory) -> w.Instance:
    return w.write_one_bit_instance(tmp_path_factory.mktemp("frames") / "one_bit.dcm")


@pytest.fixture(scope="session", params=[True, False], ids=["bot", "empty-bot"])
def encapsulated(request: pytest.FixtureRequest) -> bytes:
    return w.encapsulated_value(with_bot=request.param)


@pytest.fixture(scope="session")
def marker_value() -> bytes:
    return w.marker_value()


@pytest.fixture(scope="session")
def tiny_value() -> bytes:
    return w.tiny_value()


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    # Record the workload sizes, so a table made from a saved JSON says what it measured.
    output_json["kernels"] = {"quick": w.IS_QUICK, "sizes": dataclasses.asdict(w.SIZES)}
