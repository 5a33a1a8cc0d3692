"""Native (uncompressed) Pixel Data frames, compiled. The specification is ``_frames_py``:
same names, results, exception types and messages. The frame copies live here; the cold
paths (``frame_bits`` and the checks of the constructor's arguments) are the twin's."""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.memoryview cimport PyMemoryView_GET_BUFFER
from cpython.ref cimport PyObject
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset

import operator

from dicomaccel._frames_py import _layout, check_frames_fit, frame_bits

cdef extern from "Python.h":
    # Declared here because cpython.number types `exc` as object; with exc == NULL an int too
    # large for Py_ssize_t is clipped instead of raising OverflowError, so a huge index falls
    # through to the IndexError the twin raises.
    Py_ssize_t PyNumber_AsSsize_t(object o, PyObject* exc) except? -1

__all__ = ["frame_bits", "check_frames_fit", "NativeFrames"]

# Below this many bytes, dropping and re-taking the GIL costs more than the copy it frees.
cdef Py_ssize_t NOGIL_MIN = 1 << 16


cdef inline uint64_t _load_le64(const unsigned char* p) noexcept nogil:
    # Byte by byte so the result is host-endian independent; GCC and Clang fuse it to one load.
    return (<uint64_t>p[0] | <uint64_t>p[1] << 8 | <uint64_t>p[2] << 16 | <uint64_t>p[3] << 24
            | <uint64_t>p[4] << 32 | <uint64_t>p[5] << 40 | <uint64_t>p[6] << 48
            | <uint64_t>p[7] << 56)


cdef inline void _store_le64(unsigned char* p, uint64_t w) noexcept nogil:
    cdef int k
    for k in range(8):
        p[k] = <unsigned char>(w >> (8 * k))


cdef void _bitcopy(unsigned char* dst, uint64_t dbit, const unsigned char* src, uint64_t sbit,
                   uint64_t nbits) noexcept nogil:
    # ORs `nbits` bits from bit `sbit` of src into bit `dbit` of a zeroed dst. Bits are numbered
    # LSB-first within each byte (PS3.5 §8.1.1), i.e. as in a little-endian integer. Reads stay
    # within the bytes those bits touch: a further source byte is read only when the bits
    # taken continue into it.
    cdef unsigned int doff, soff, take, v
    cdef const unsigned char* s
    cdef uint64_t w
    while nbits:
        doff = <unsigned int>(dbit & 7)
        soff = <unsigned int>(sbit & 7)
        s = src + (sbit >> 3)
        if doff == 0 and nbits >= 64:
            # dst is on a byte boundary: whole 8-byte words, each fully written by these bits.
            w = _load_le64(s)
            if soff:
                w = (w >> soff) | (<uint64_t>s[8] << (64 - soff))
            _store_le64(dst + (dbit >> 3), w)
            dbit += 64
            sbit += 64
            nbits -= 64
            continue
        take = 8 - doff
        if take > nbits:
            take = <unsigned int>nbits
        v = s[0] >> soff
        if soff + take > 8:
            v |= (<unsigned int>s[1]) << (8 - soff)
        v &= (1u << take) - 1
        dst[dbit >> 3] |= <unsigned char>(v << doff)
        dbit += take
        sbit += take
        nbits -= take


cdef void _gather_bytes(unsigned char* dst, const unsigned char* src, const Py_ssize_t* idx,
                        Py_ssize_t n, Py_ssize_t flen) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        memcpy(dst + k * flen, src + idx[k] * flen, <size_t>flen)


cdef void _gather_bits(unsigned char* dst, const unsigned char* src, const Py_ssize_t* idx,
                       Py_ssize_t n, uint64_t bits) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        _bitcopy(dst, <uint64_t>k * bits, src, <uint64_t>idx[k] * bits, bits)


@cython.final
cdef class NativeFrames:
    """The frames of one native Pixel Data value inside a larger buffer.
    See ``_frames_py.NativeFrames``."""

    cdef object _view                  # read-only 1-D "B" memoryview of the whole buffer
    cdef const unsigned char* _data    # start of the Pixel Data value; _view keeps it alive
    cdef uint64_t _bits
    cdef readonly object frame_bits
    cdef readonly Py_ssize_t frame_length
    cdef readonly bint byte_aligned
    cdef readonly Py_ssize_t number_of_frames
    cdef readonly Py_ssize_t offset
    cdef readonly Py_ssize_t length

    def __init__(self, buffer, *, rows, columns, samples_per_pixel=1, bits_allocated,
                 number_of_frames=1, photometric_interpretation="", offset=0, length=-1):
        # Geometry and _data are read between index checks and GIL-free copies; letting a
        # second __init__ swap them underneath would turn validated indices into wild reads.
        if self._view is not None:
            raise TypeError("NativeFrames is already initialised")
        view, bits, number_of_frames, offset, length = _layout(
            buffer, rows, columns, samples_per_pixel, bits_allocated, number_of_frames,
            photometric_interpretation, offset, length,
        )
        # From here every quantity is bounded by the buffer size. Bit positions reach
        # 8 * length, which fits 64 bits because address spaces are far below 2**61 bytes.
        self._view = view
        self._data = <const unsigned char*>PyMemoryView_GET_BUFFER(view).buf + <Py_ssize_t>offset
        self._bits = <uint64_t>bits
        self.frame_bits = bits
        self.frame_length = (bits + 7) // 8
        self.byte_aligned = bits % 8 == 0
        self.number_of_frames = number_of_frames
        self.offset = offset
        self.length = length

    cdef Py_ssize_t _index(self, object index) except -1:
        cdef Py_ssize_t i = PyNumber_AsSsize_t(index, NULL)
        if i < 0 or i >= self.number_of_frames:
            raise IndexError(
                f"frame index {operator.index(index)} out of range for "
                f"{self.number_of_frames} frame(s)"
            )
        return i

    def frame_range(self, index):
        """Absolute ``(start, end)`` byte offsets of frame `index` in the buffer.
        See ``_frames_py.NativeFrames.frame_range``."""
        cdef Py_ssize_t i = self._index(index)
        cdef Py_ssize_t start
        cdef uint64_t first
        if self.byte_aligned:
            start = self.offset + i * self.frame_length
            return start, start + self.frame_length
        first = <uint64_t>i * self._bits
        return (self.offset + <Py_ssize_t>(first >> 3),
                self.offset + <Py_ssize_t>((first + self._bits + 7) >> 3))

    def frame(self, index):
        """Frame `index`: a read-only memoryview when byte-aligned, else re-packed ``bytes``.
        See ``_frames_py.NativeFrames.frame``."""
        cdef Py_ssize_t i = self._index(index)
        cdef Py_ssize_t start
        cdef unsigned char* dst
        if self.byte_aligned:
            start = self.offset + i * self.frame_length
            return self._view[start:start + self.frame_length]
        out = PyBytes_FromStringAndSize(NULL, self.frame_length)
        dst = <unsigned char*>PyBytes_AS_STRING(out)
        memset(dst, 0, <size_t>self.frame_length)
        if self.frame_length >= NOGIL_MIN:
            with nogil:
                _bitcopy(dst, 0, self._data, <uint64_t>i * self._bits, self._bits)
        else:
            _bitcopy(dst, 0, self._data, <uint64_t>i * self._bits, self._bits)
        return out

    def gather(self, indices):
        """The listed frames concatenated into a new, even-length Pixel Data value.
        See ``_frames_py.NativeFrames.gather``."""
        cdef list items = list(indices)
        cdef Py_ssize_t n = len(items)
        cdef Py_ssize_t k, total
        cdef unsigned char* dst
        # A list never holds more than PY_SSIZE_T_MAX / sizeof(PyObject*) items, so this
        # size cannot overflow; the + 1 keeps an empty request from being a NULL allocation.
        cdef Py_ssize_t* idx = <Py_ssize_t*>PyMem_Malloc(<size_t>n * sizeof(Py_ssize_t) + 1)
        if idx == NULL:
            raise MemoryError()
        try:
            for k in range(n):
                idx[k] = self._index(items[k])
            # Python ints: n * frame_bits is unbounded until the allocation succeeds.
            size = (n * self.frame_bits + 7) // 8
            out = PyByteArray_FromStringAndSize(NULL, size + (size & 1))
            total = len(out)
            dst = <unsigned char*>PyByteArray_AS_STRING(out)
            if self.byte_aligned:
                if total > size:
                    dst[total - 1] = 0   # PS3.5 §7.1.1 pad byte
                if total >= NOGIL_MIN:
                    with nogil:
                        _gather_bytes(dst, self._data, idx, n, self.frame_length)
                else:
                    _gather_bytes(dst, self._data, idx, n, self.frame_length)
            else:
                memset(dst, 0, <size_t>total)
                if total >= NOGIL_MIN:
                    with nogil:
                        _gather_bits(dst, self._data, idx, n, self._bits)
                else:
                    _gather_bits(dst, self._data, idx, n, self._bits)
            return out
        finally:
            PyMem_Free(idx)
