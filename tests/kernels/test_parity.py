"""Parity of each kernel's twin, its ``.pyi`` stub and its compiled module.

(a) API: the twin's ``__all__``, the stub (read with ``ast``, never imported) and the compiled
    module name the same things, and functions and methods take the same parameters with the
    same defaults.
(b) Behaviour on real files: every Pixel Data value in pydicom's test data goes through both
    implementations and gives the same tables, mapping and frame bytes, or the same exception
    type, message and offset.

Compiled-side tests skip when DICOMACCEL_NO_EXTENSIONS=1 (or the module is not built and
DICOMACCEL_REQUIRE_EXTENSIONS is not set).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import os
import warnings
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from dicomaccel.errors import ParseError
from dicomaccel.testing import implementations

KERNELS = ("multipart", "frames", "encaps", "walk")
SRC = Path(importlib.import_module("dicomaccel").__file__).parent
TWINS = {k: implementations(k)["py"] for k in KERNELS}
COMPILED = {k: implementations(k).get("c") for k in KERNELS}


def compiled(kernel: str):
    module = COMPILED[kernel]
    if module is None:
        pytest.skip(f"dicomaccel._{kernel}_c is not in use")
    return module


# --------------------------------------------------------------------------------------------
# (a) API parity
# --------------------------------------------------------------------------------------------

EMPTY = "<no default>"


def _default_repr(value: object) -> str:
    # repr keeps False apart from 0 and "" apart from None.
    return EMPTY if value is inspect.Parameter.empty else repr(value)


def runtime_params(obj) -> list[tuple[str, str, str]]:
    """(name, kind, default) of each parameter, from ``inspect.signature``."""
    return [
        (p.name, p.kind.name, _default_repr(p.default))
        for p in inspect.signature(obj).parameters.values()
    ]


def stub_params(node: ast.FunctionDef) -> list[tuple[str, str, str]]:
    """(name, kind, default) of each parameter of a stub ``def``; defaults must be literals."""
    a = node.args
    positional = [(arg, "POSITIONAL_ONLY") for arg in a.posonlyargs]
    positional += [(arg, "POSITIONAL_OR_KEYWORD") for arg in a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + a.defaults
    out = []
    for (arg, kind), default in zip(positional, defaults):
        out.append((arg.arg, kind, _literal(default)))
    if a.vararg:
        out.append((a.vararg.arg, "VAR_POSITIONAL", EMPTY))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, "KEYWORD_ONLY", _literal(default)))
    if a.kwarg:
        out.append((a.kwarg.arg, "VAR_KEYWORD", EMPTY))
    return out


def _literal(node: ast.expr | None) -> str:
    # A stub default of `...` reads as Ellipsis and so fails against the twin's real default.
    return EMPTY if node is None else repr(ast.literal_eval(node))


@dataclass
class StubClass:
    node: ast.ClassDef
    methods: dict[str, ast.FunctionDef] = field(default_factory=dict)
    properties: set[str] = field(default_factory=set)
    attributes: set[str] = field(default_factory=set)

    @property
    def public_members(self) -> set[str]:
        names = self.properties | self.attributes | set(self.methods)
        return {n for n in names if not n.startswith("_")}


@dataclass
class Stub:
    all: list[str]
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    classes: dict[str, StubClass] = field(default_factory=dict)
    constants: dict[str, ast.expr | None] = field(default_factory=dict)

    @property
    def public_names(self) -> set[str]:
        return {
            n
            for n in (*self.functions, *self.classes, *self.constants)
            if not n.startswith("_")
        }


def read_stub(kernel: str) -> Stub:
    tree = ast.parse((SRC / f"_{kernel}_c.pyi").read_text(encoding="utf-8"))
    stub = Stub(all=[])
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            stub.all = ast.literal_eval(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stub.constants[node.target.id] = node.value
        elif isinstance(node, ast.FunctionDef):
            stub.functions[node.name] = node
        elif isinstance(node, ast.ClassDef):
            cls = StubClass(node)
            for member in node.body:
                if isinstance(member, ast.FunctionDef):
                    decorators = {d.id for d in member.decorator_list if isinstance(d, ast.Name)}
                    if "property" in decorators:
                        cls.properties.add(member.name)
                    else:
                        cls.methods[member.name] = member
                elif isinstance(member, ast.AnnAssign) and isinstance(member.target, ast.Name):
                    cls.attributes.add(member.target.id)
            stub.classes[node.name] = cls
    return stub


STUBS = {k: read_stub(k) for k in KERNELS}

# One valid construction per public class, in twin and compiled module alike: (args, kwargs).
# The twin's EncapsulatedFrames sets its attributes in __init__, so members are read off an
# instance rather than the class.
SAMPLE_ARGS = {
    "MultipartScanner": (("boundary",), {}),
    "NativeFrames": ((bytes(8),), {"rows": 2, "columns": 2, "bits_allocated": 16}),
    "EncapsulatedFrames": (
        (b"\xfe\xff\x00\xe0\x00\x00\x00\x00" b"\xfe\xff\x00\xe0\x02\x00\x00\x00ab"
         b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", 1),
        {},
    ),
}


def _members(kernel: str):
    return [(name, getattr(TWINS[kernel], name)) for name in TWINS[kernel].__all__]


FUNCTIONS = [(k, n) for k in KERNELS for n, obj in _members(k) if inspect.isfunction(obj)]
CLASSES = [(k, n) for k in KERNELS for n, obj in _members(k) if inspect.isclass(obj)]
CONSTANTS = [(k, n) for k in KERNELS for n, obj in _members(k) if not callable(obj)]
METHODS = [
    (kernel, cls, name)
    for kernel, cls in CLASSES
    for name, member in vars(getattr(TWINS[kernel], cls)).items()
    if inspect.isfunction(member) and (not name.startswith("_") or name == "__init__")
]


def _id(value) -> str:
    return ".".join(value) if isinstance(value, tuple) else str(value)


def test_parameter_tables_are_populated():
    # Guards the parametrizations below against silently collecting nothing.
    assert {k for k, _ in FUNCTIONS} == {"multipart", "frames", "encaps", "walk"}
    assert {c for _, c in CLASSES} == set(SAMPLE_ARGS)
    assert ("multipart", "PART_BEGIN") in CONSTANTS
    assert ("encaps", "EncapsulatedFrames", "fragment_ranges") in METHODS


@pytest.mark.parametrize("kernel", KERNELS)
def test_stub_names_match_twin(kernel):
    twin, stub = TWINS[kernel], STUBS[kernel]
    assert len(set(twin.__all__)) == len(twin.__all__)
    assert stub.all == twin.__all__
    assert stub.public_names == set(twin.__all__)
    for name in twin.__all__:
        obj = getattr(twin, name)
        if inspect.isclass(obj):
            assert name in stub.classes, name
        elif callable(obj):
            assert name in stub.functions, name
        else:
            assert name in stub.constants, name


@pytest.mark.c_extension
@pytest.mark.parametrize("kernel", KERNELS)
def test_compiled_names_match_twin(kernel):
    module, twin = compiled(kernel), TWINS[kernel]
    assert list(module.__all__) == twin.__all__
    for name in twin.__all__:
        assert hasattr(module, name), name
        assert inspect.isclass(getattr(module, name)) == inspect.isclass(getattr(twin, name))
        assert callable(getattr(module, name)) == callable(getattr(twin, name))


@pytest.mark.parametrize("kernel, name", CONSTANTS, ids=_id)
def test_constants_agree(kernel, name):
    value = getattr(TWINS[kernel], name)
    node = STUBS[kernel].constants[name]
    assert node is not None, f"stub gives no value for {name}"
    assert ast.literal_eval(node) == value
    if COMPILED[kernel] is not None:
        assert getattr(COMPILED[kernel], name) == value


@pytest.mark.parametrize("kernel, name", FUNCTIONS, ids=_id)
def test_function_signature_stub(kernel, name):
    expected = runtime_params(getattr(TWINS[kernel], name))
    assert stub_params(STUBS[kernel].functions[name]) == expected


@pytest.mark.c_extension
@pytest.mark.parametrize("kernel, name", FUNCTIONS, ids=_id)
def test_function_signature_compiled(kernel, name):
    func = getattr(compiled(kernel), name)
    try:
        actual = runtime_params(func)
    except (ValueError, TypeError):
        pytest.skip(f"no signature embedded for {kernel}.{name}")
    assert actual == runtime_params(getattr(TWINS[kernel], name))


@pytest.mark.parametrize("kernel, cls, name", METHODS, ids=_id)
def test_method_signature_stub(kernel, cls, name):
    expected = runtime_params(getattr(getattr(TWINS[kernel], cls), name))
    assert stub_params(STUBS[kernel].classes[cls].methods[name]) == expected


@pytest.mark.c_extension
@pytest.mark.parametrize("kernel, cls, name", METHODS, ids=_id)
def test_method_signature_compiled(kernel, cls, name):
    expected = runtime_params(getattr(getattr(TWINS[kernel], cls), name))
    if name != "__init__":
        method = getattr(getattr(compiled(kernel), cls), name)
        try:
            actual = runtime_params(method)
        except (ValueError, TypeError):
            pytest.skip(f"no signature embedded for {cls}.{name}")
        assert actual == expected
        return
    # A cdef class has no introspectable __init__; embedsignature puts "Cls(params)" on the
    # first line of the class docstring instead. Cython 3.3.1 writes the `*` marker there one
    # parameter late (it drops `self` but still counts it), so only names and defaults are
    # compared here; test_keyword_only_arguments_refused_positionally checks kinds by calling.
    doc = (getattr(compiled(kernel), cls).__doc__ or "").partition("\n")[0]
    if not doc.startswith(f"{cls}("):
        pytest.skip(f"no signature embedded for {cls}")
    embedded = stub_params(ast.parse(f"def f{doc[len(cls):]}: pass").body[0])
    assert [(n, d) for n, _, d in embedded] == [(n, d) for n, _, d in expected[1:]]


@pytest.mark.parametrize("kernel, cls", CLASSES, ids=_id)
def test_class_members(kernel, cls):
    args, kwargs = SAMPLE_ARGS[cls]
    instance = getattr(TWINS[kernel], cls)(*args, **kwargs)
    twin_members = {n for n in dir(instance) if not n.startswith("_")}
    assert STUBS[kernel].classes[cls].public_members == twin_members
    if COMPILED[kernel] is not None:
        other = getattr(COMPILED[kernel], cls)(*args, **kwargs)
        assert {n for n in dir(other) if not n.startswith("_")} == twin_members
        for name in STUBS[kernel].classes[cls].properties:
            assert getattr(other, name) == getattr(instance, name), name


@pytest.mark.c_extension
@pytest.mark.parametrize("kernel, cls", CLASSES, ids=_id)
def test_keyword_only_arguments_refused_positionally(kernel, cls):
    compiled_cls = getattr(compiled(kernel), cls)
    twin_cls = getattr(TWINS[kernel], cls)
    args, kwargs = SAMPLE_ARGS[cls]
    params = runtime_params(twin_cls.__init__)[1:]
    positional = [n for n, kind, _ in params if kind == "POSITIONAL_OR_KEYWORD"]
    keyword_only = [n for n, kind, _ in params if kind == "KEYWORD_ONLY"]
    assert keyword_only and len(args) == len(positional)
    # One argument more, passed positionally, is a TypeError in both; a class that took it
    # as its first keyword-only parameter would succeed or raise ValueError instead.
    for target in (twin_cls, compiled_cls):
        with pytest.raises(TypeError):
            target(*args, 0, **kwargs)


# --------------------------------------------------------------------------------------------
# (b) Behaviour on pydicom's test files
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CorpusFile:
    path: str

    def __str__(self) -> str:
        return os.path.basename(self.path)


def _read(path: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the deliberately broken files
        return pydicom.dcmread(path, force=True)


def _corpus() -> tuple[list[CorpusFile], list[CorpusFile]]:
    encapsulated, native = [], []
    for path in sorted(get_testdata_files()):
        if not os.path.isfile(path):
            continue
        try:
            ds = _read(path)
        except Exception:  # not DICOM (README, JSON, ICC profile, gzip ...)
            continue
        if "PixelData" not in ds:
            continue
        # Undefined length is what makes a Pixel Data value encapsulated (PS3.5 A.4).
        if ds["PixelData"].is_undefined_length:
            encapsulated.append(CorpusFile(path))
        elif all(k in ds for k in ("Rows", "Columns", "BitsAllocated")):
            native.append(CorpusFile(path))
    return encapsulated, native


ENCAPSULATED, NATIVE = _corpus()


@dataclass
class Inputs:
    """Two placements of one Pixel Data value: pydicom's copy, and the file at its offset."""

    ds: pydicom.Dataset
    value: bytes
    file: bytes | None
    file_offset: int
    number_of_frames: object

    @classmethod
    def load(cls, item: CorpusFile) -> Inputs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # badVR.dcm's Number of Frames "1A", on access
            return cls._load(item)

    @classmethod
    def _load(cls, item: CorpusFile) -> Inputs:
        ds = _read(item.path)
        value = ds.PixelData
        tsyntax = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
        # A deflated file's offsets count in the inflated stream (PS3.5 A.5), not in the file.
        deflated = bool(tsyntax) and tsyntax.is_deflated
        tell = ds["PixelData"].file_tell
        raw = None if deflated or tell is None else Path(item.path).read_bytes()
        # Absent or empty Number of Frames means one frame (PS3.3 C.7.6.6); anything else,
        # even an invalid IS such as "1A", goes to both implementations unchanged.
        nframes = ds.get("NumberOfFrames")
        return cls(ds, value, raw, tell or 0, 1 if nframes in (None, "") else nframes)


def _digest(data) -> tuple[str, int, str]:
    view = memoryview(data)
    return type(data).__name__, view.nbytes, hashlib.blake2b(view, digest_size=16).hexdigest()


def _table(values: array) -> tuple[str, list[int]]:
    return values.typecode, values.tolist()


def _items(module, buffer, offset: int) -> tuple:
    basic, offsets, lengths, end = module.parse_items(buffer, offset)
    return _table(basic), _table(offsets), _table(lengths), end


def outcome(call) -> tuple:
    """What ``call()`` returned, or the exception it raised, in comparable form."""
    try:
        return ("returned", call())
    except Exception as exc:  # errors are part of the contract
        return ("raised", type(exc), str(exc), getattr(exc, "offset", None))


def native_outcomes(module, inputs: Inputs) -> dict[str, tuple]:
    ds = inputs.ds
    geometry = {
        "rows": ds.Rows,
        "columns": ds.Columns,
        "samples_per_pixel": ds.get("SamplesPerPixel", 1),
        "bits_allocated": ds.BitsAllocated,
        "number_of_frames": inputs.number_of_frames,
        "photometric_interpretation": ds.get("PhotometricInterpretation", ""),
    }
    placements = {"value": (inputs.value, 0, -1)}
    if inputs.file is not None:
        placements["file"] = (inputs.file, inputs.file_offset, len(inputs.value))
    results: dict[str, tuple] = {}
    for where, (buffer, offset, length) in placements.items():
        made = outcome(
            lambda: module.NativeFrames(buffer, offset=offset, length=length, **geometry)
        )
        results[f"{where}: NativeFrames"] = made if made[0] == "raised" else ("ok",)
        if made[0] == "raised":
            continue
        nf = made[1]
        n = nf.number_of_frames
        results[f"{where}: attributes"] = (
            nf.frame_bits, nf.frame_length, nf.byte_aligned, n, nf.offset, nf.length
        )
        results[f"{where}: frame_range"] = tuple(nf.frame_range(k) for k in range(n))
        results[f"{where}: frames"] = tuple(_digest(nf.frame(k)) for k in range(n))
        results[f"{where}: gather"] = _digest(nf.gather(range(n - 1, -1, -1)))
        results[f"{where}: out of range"] = outcome(lambda: nf.frame(n))
    return results


def encaps_outcomes(module, inputs: Inputs) -> dict[str, tuple]:
    ds = inputs.ds
    eot = (ds.get("ExtendedOffsetTable"), ds.get("ExtendedOffsetTableLengths"))
    results: dict[str, tuple] = {}
    if eot[0] is not None and eot[1] is not None:
        results["extended table"] = outcome(
            lambda: tuple(map(_table, module.parse_extended_offset_table(*eot)))
        )
    else:
        eot = (None, None)
    # pydicom's value stops before the Sequence Delimitation Item; the file keeps it.
    placements = {"value": (inputs.value, 0)}
    if inputs.file is not None:
        placements["file"] = (inputs.file, inputs.file_offset)
    for where, (buffer, offset) in placements.items():
        results[f"{where}: parse_items"] = outcome(lambda: _items(module, buffer, offset))
        made = outcome(
            lambda: module.EncapsulatedFrames(
                buffer,
                inputs.number_of_frames,
                offset=offset,
                extended_offsets=eot[0],
                extended_lengths=eot[1],
            )
        )
        results[f"{where}: EncapsulatedFrames"] = made if made[0] == "raised" else ("ok",)
        if made[0] == "raised":
            continue
        ef = made[1]
        n = ef.number_of_frames
        results[f"{where}: tables"] = (
            n,
            _table(ef.basic_offsets),
            _table(ef.fragment_offsets),
            _table(ef.fragment_lengths),
            ef.end_offset,
            _table(ef.frame_fragments),
            ef.mapping,
        )
        results[f"{where}: fragment_ranges"] = tuple(ef.fragment_ranges(k) for k in range(n))
        results[f"{where}: frames"] = tuple(_digest(ef.frame(k)) for k in range(n))
        results[f"{where}: out of range"] = outcome(lambda: ef.fragment_ranges(n))
    return results


def assert_same(expected: dict[str, tuple], actual: dict[str, tuple]) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key] == value, key


@pytest.mark.c_extension
@pytest.mark.parametrize("item", ENCAPSULATED, ids=str)
def test_encaps_parity_on_corpus(item):
    module = compiled("encaps")
    inputs = Inputs.load(item)
    assert_same(encaps_outcomes(TWINS["encaps"], inputs), encaps_outcomes(module, inputs))


@pytest.mark.c_extension
@pytest.mark.parametrize("item", NATIVE, ids=str)
def test_frames_parity_on_corpus(item):
    module = compiled("frames")
    inputs = Inputs.load(item)
    assert_same(native_outcomes(TWINS["frames"], inputs), native_outcomes(module, inputs))


def test_corpus_exercises_the_kernels():
    """The corpus reaches the success paths, so the parity tests compare more than errors."""
    assert len(ENCAPSULATED) >= 40 and len(NATIVE) >= 80
    mappings, native_ok, value_errors = set(), 0, set()
    for item in ENCAPSULATED:
        results = encaps_outcomes(TWINS["encaps"], Inputs.load(item))
        # Without its Sequence Delimitation Item, pydicom's copy of the value is refused.
        value = results["value: EncapsulatedFrames"]
        assert value[:2] == ("raised", ParseError), item
        value_errors.add(value[2].partition(" (at byte")[0])
        if "file: tables" in results:
            mappings.add(results["file: tables"][-1])
    for item in NATIVE:
        native_ok += "value: frames" in native_outcomes(TWINS["frames"], Inputs.load(item))
    assert value_errors == {TWINS["encaps"].MSG_NO_SEQ_DELIM}
    assert {"basic", "one-to-one", "single-frame"} <= mappings
    assert native_ok >= 80
