# Encapsulated Pixel Data (PS3.5 A.4), compiled. dicomaccel._encaps_py is the specification:
# same API, same results, same exception types and messages. The item walk, the frame mapping
# and re-encapsulation live here; the cold paths (buffer and bound checks, the Extended Offset
# Table decoding, error text) are the twin's functions.
#
# Item headers are walked over a raw pointer with every length checked against the bytes left
# (`n > end - pos`, uint32 widened first) whatever the boundscheck directive says. Fragment
# positions go into malloc'd int64 tables owned by EncapsulatedFrames; the public arrays are
# copies, so changing them cannot steer frame() outside the buffer.

import operator
from array import array

from cpython cimport array as carray
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.memoryview cimport PyMemoryView_GET_BUFFER
from cpython.number cimport PyNumber_Index
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

from dicomaccel._encaps_py import (
    MSG_NO_SEQ_DELIM,
    MSG_UNDEFINED,
    _bounds as resolve_bounds,
    _byte_view as byte_view,
    _eot_values as eot_values,
    _format_tag as format_tag,
    parse_extended_offset_table,
)
from dicomaccel.errors import ParseError

__all__ = ["parse_items", "parse_extended_offset_table", "EncapsulatedFrames", "encapsulate"]

# (FFFE,E000) and (FFFE,E0DD) read as one little-endian uint32 (group in the low half).
cdef uint32_t ITEM_TAG = 0xE000FFFE
cdef uint32_t SEQ_DELIM_TAG = 0xE0DDFFFE
cdef uint32_t UNDEFINED_LENGTH = 0xFFFFFFFF
# Largest even uint32: items have even length and 0xFFFFFFFF means undefined (PS3.5 A.4).
cdef Py_ssize_t MAX_ITEM_LENGTH = 0xFFFFFFFE
cdef Py_ssize_t MAX_BOT_OFFSET = 0xFFFFFFFF
# Below this many bytes, releasing and re-taking the GIL costs more than the work it frees.
cdef Py_ssize_t NOGIL_THRESHOLD = 1 << 16

cdef carray.array Q_TEMPLATE = array("Q")
cdef carray.array q_TEMPLATE = array("q")

cdef enum WalkError:
    WALK_OK
    WALK_TRUNCATED
    WALK_BOT_TAG
    WALK_UNDEFINED
    WALK_TOO_LONG
    WALK_BOT_LENGTH
    WALK_NO_DELIM
    WALK_DELIM_LENGTH
    WALK_TAG
    WALK_ODD
    WALK_NOMEM


cdef struct Walk:
    Py_ssize_t bot_pos
    Py_ssize_t bot_len
    int64_t* offsets
    int64_t* lengths
    Py_ssize_t count
    Py_ssize_t capacity
    Py_ssize_t end_offset
    WalkError err
    Py_ssize_t err_pos
    uint64_t err_value
    Py_ssize_t err_avail


cdef inline uint32_t u32le(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline void put_u32le(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef inline void put_u64le(unsigned char* p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = (v >> (8 * i)) & 0xFF


cdef inline int walk_fail(Walk* w, WalkError err, Py_ssize_t pos, uint64_t value,
                          Py_ssize_t avail) noexcept nogil:
    w.err = err
    w.err_pos = pos
    w.err_value = value
    w.err_avail = avail
    return -1


cdef int walk_items(const unsigned char* data, Py_ssize_t pos, Py_ssize_t end, Walk* w) noexcept nogil:
    cdef Py_ssize_t avail = end - pos
    cdef Py_ssize_t length
    cdef Py_ssize_t capacity
    cdef uint32_t tag, raw_length
    cdef int64_t* grown
    # Item 1 is always the Basic Offset Table, possibly empty (PS3.5 A.4, Table A.4-1).
    if avail < 8:
        return walk_fail(w, WALK_TRUNCATED, pos, 0, avail)
    tag = u32le(data + pos)
    raw_length = u32le(data + pos + 4)
    if tag != ITEM_TAG:
        return walk_fail(w, WALK_BOT_TAG, pos, tag, 0)
    if raw_length == UNDEFINED_LENGTH:
        return walk_fail(w, WALK_UNDEFINED, pos, 0, 0)
    length = <Py_ssize_t>raw_length
    if length > avail - 8:
        return walk_fail(w, WALK_TOO_LONG, pos, raw_length, avail - 8)
    if length % 4:
        return walk_fail(w, WALK_BOT_LENGTH, pos, raw_length, 0)
    w.bot_pos = pos
    w.bot_len = length
    pos += 8 + length
    while True:
        avail = end - pos
        if avail == 0:
            return walk_fail(w, WALK_NO_DELIM, pos, 0, 0)
        if avail < 8:
            return walk_fail(w, WALK_TRUNCATED, pos, 0, avail)
        tag = u32le(data + pos)
        raw_length = u32le(data + pos + 4)
        if tag == SEQ_DELIM_TAG:
            if raw_length:
                return walk_fail(w, WALK_DELIM_LENGTH, pos, raw_length, 0)
            w.end_offset = pos + 8
            return 0
        if tag != ITEM_TAG:
            return walk_fail(w, WALK_TAG, pos, tag, 0)
        if raw_length == UNDEFINED_LENGTH:
            return walk_fail(w, WALK_UNDEFINED, pos, 0, 0)
        length = <Py_ssize_t>raw_length
        if length > avail - 8:
            return walk_fail(w, WALK_TOO_LONG, pos, raw_length, avail - 8)
        if length & 1:
            # PS3.5 A.4: fragment items have even length (the last of a frame is padded).
            return walk_fail(w, WALK_ODD, pos, raw_length, 0)
        if w.count == w.capacity:
            capacity = 2 * w.capacity if w.capacity else 64
            grown = <int64_t*>realloc(w.offsets, capacity * sizeof(int64_t))
            if grown == NULL:
                return walk_fail(w, WALK_NOMEM, pos, 0, 0)
            w.offsets = grown
            grown = <int64_t*>realloc(w.lengths, capacity * sizeof(int64_t))
            if grown == NULL:
                return walk_fail(w, WALK_NOMEM, pos, 0, 0)
            w.lengths = grown
            w.capacity = capacity
        w.offsets[w.count] = pos + 8
        w.lengths[w.count] = length
        w.count += 1
        pos += 8 + length


cdef int raise_walk_error(Walk* w) except -1:
    cdef WalkError err = w.err
    cdef Py_ssize_t pos = w.err_pos
    if err == WALK_TRUNCATED:
        raise ParseError(f"truncated item header: expected 8 bytes, found {w.err_avail}", pos)
    if err == WALK_BOT_TAG:
        raise ParseError(
            f"expected Basic Offset Table item tag (FFFE,E000), found {format_tag(w.err_value)}", pos
        )
    if err == WALK_UNDEFINED:
        raise ParseError(MSG_UNDEFINED, pos)
    if err == WALK_TOO_LONG:
        raise ParseError(f"item length {w.err_value} exceeds the {w.err_avail} bytes remaining", pos)
    if err == WALK_BOT_LENGTH:
        raise ParseError(f"Basic Offset Table length {w.err_value} is not a multiple of 4", pos)
    if err == WALK_NO_DELIM:
        raise ParseError(MSG_NO_SEQ_DELIM, pos)
    if err == WALK_DELIM_LENGTH:
        raise ParseError(f"Sequence Delimitation Item has length {w.err_value}, expected 0", pos)
    if err == WALK_TAG:
        raise ParseError(
            "expected item tag (FFFE,E000) or Sequence Delimitation Item (FFFE,E0DD), "
            f"found {format_tag(w.err_value)}",
            pos,
        )
    if err == WALK_ODD:
        raise ParseError(f"odd fragment length {w.err_value}; fragment items have even length", pos)
    raise MemoryError()


cdef int run_walk(const unsigned char[::1] data, Py_ssize_t start, Py_ssize_t stop, Walk* w) except -1:
    cdef const unsigned char* p = &data[0] if data.shape[0] > 0 else NULL
    cdef int rc
    if stop - start >= NOGIL_THRESHOLD:
        with nogil:
            rc = walk_items(p, start, stop, w)
    else:
        rc = walk_items(p, start, stop, w)
    if rc < 0:
        raise_walk_error(w)
    return 0


cdef carray.array basic_table(const unsigned char[::1] data, Walk* w):
    cdef Py_ssize_t n = w.bot_len // 4
    cdef Py_ssize_t i
    cdef carray.array out = carray.clone(Q_TEMPLATE, n, False)
    cdef uint64_t* dst = <uint64_t*>out.data.as_voidptr
    for i in range(n):
        dst[i] = u32le(&data[w.bot_pos + 8 + 4 * i])
    return out


cdef carray.array int64_table(const int64_t* values, Py_ssize_t n):
    cdef carray.array out = carray.clone(q_TEMPLATE, n, False)
    if n:
        memcpy(out.data.as_voidptr, values, n * sizeof(int64_t))
    return out


cdef inline void walk_free(Walk* w) noexcept:
    free(w.offsets)
    free(w.lengths)
    w.offsets = NULL
    w.lengths = NULL


def parse_items(buffer, offset=0, end=-1):
    """parse_items(buffer, offset=0, end=-1) -> (basic_offsets, fragment_offsets, fragment_lengths, end_offset)

    Walk the items of an encapsulated Pixel Data value (PS3.5 A.4); see
    ``dicomaccel._encaps_py.parse_items``.
    """
    cdef Walk w
    view = byte_view(buffer)
    start, stop = resolve_bounds(view.nbytes, offset, end)
    w = Walk(0, 0, NULL, NULL, 0, 0, 0, WALK_OK, 0, 0, 0)
    try:
        run_walk(view, start, stop, &w)
        return (
            basic_table(view, &w),
            int64_table(w.offsets, w.count),
            int64_table(w.lengths, w.count),
            w.end_offset,
        )
    finally:
        walk_free(&w)


cdef inline bint ends_with_eoi(const unsigned char* p, int64_t length) noexcept nogil:
    # JPEG EOI and JPEG 2000 EOC are both FF D9; padding after the marker is 00 (PS3.5 A.4).
    while length > 0 and p[length - 1] == 0:
        length -= 1
    return length >= 2 and p[length - 2] == 0xFF and p[length - 1] == 0xD9


cdef class EncapsulatedFrames:
    """EncapsulatedFrames(buffer, number_of_frames, *, offset=0, end=-1, extended_offsets=None, extended_lengths=None)

    Frames of an encapsulated Pixel Data value, as offsets into the caller's buffer; see
    ``dicomaccel._encaps_py.EncapsulatedFrames``.
    """

    cdef readonly Py_ssize_t number_of_frames
    cdef readonly object basic_offsets
    cdef readonly object fragment_offsets
    cdef readonly object fragment_lengths
    cdef readonly Py_ssize_t end_offset
    cdef readonly object frame_fragments
    cdef readonly str mapping
    cdef object _view
    cdef const unsigned char[::1] _data
    cdef int64_t* _offsets
    cdef int64_t* _lengths
    cdef int64_t* _bounds
    cdef Py_ssize_t _nfrags

    def __cinit__(self):
        self._offsets = NULL
        self._lengths = NULL
        self._bounds = NULL

    def __dealloc__(self):
        free(self._offsets)
        free(self._lengths)
        free(self._bounds)

    def __init__(self, buffer, number_of_frames, *, offset=0, end=-1,
                 extended_offsets=None, extended_lengths=None):
        cdef Walk w
        cdef Py_ssize_t nframes, origin, start_pos
        nframes_obj = operator.index(number_of_frames)
        if nframes_obj < 1:
            raise ValueError(f"number_of_frames must be at least 1, got {nframes_obj}")
        if (extended_offsets is None) != (extended_lengths is None):
            raise ValueError("extended_offsets and extended_lengths must be given together")
        # A repeated __init__ starts from scratch, as the twin's does.
        self.number_of_frames = 0
        free(self._offsets)
        free(self._lengths)
        free(self._bounds)
        self._offsets = NULL
        self._lengths = NULL
        self._bounds = NULL
        view = byte_view(buffer)
        start, stop = resolve_bounds(view.nbytes, offset, end)
        w = Walk(0, 0, NULL, NULL, 0, 0, 0, WALK_OK, 0, 0, 0)
        try:
            run_walk(view, start, stop, &w)
        except BaseException:
            walk_free(&w)
            raise
        # Ownership of the fragment tables passes to self (freed in __dealloc__).
        self._offsets = w.offsets
        self._lengths = w.lengths
        self._nfrags = w.count
        self._data = view
        self._view = view
        start_pos = start
        # Offset-table origin: the first item tag after the BOT item (PS3.5 A.4).
        origin = start_pos + 8 + w.bot_len
        basic = basic_table(view, &w)

        if nframes_obj > self._nfrags and nframes_obj > len(basic) and extended_offsets is None:
            # No rule can map more frames than there are fragments or BOT entries; deciding
            # here keeps huge frame counts out of Py_ssize_t arithmetic.
            if len(basic):
                raise ParseError(
                    f"Basic Offset Table has {len(basic)} entries, expected {nframes_obj} "
                    "(Number of Frames)",
                    start_pos,
                )
            raise ParseError(f"fewer fragments ({self._nfrags}) than frames ({nframes_obj})", origin)
        if extended_offsets is not None:
            table = eot_values(extended_offsets, "Extended Offset Table")
            sizes = eot_values(extended_lengths, "Extended Offset Table Lengths")
            if len(table) != len(sizes):
                raise ParseError(
                    f"Extended Offset Table has {len(table)} entries but Extended Offset Table "
                    f"Lengths has {len(sizes)}",
                    origin,
                )
            if len(table) != nframes_obj:
                raise ParseError(
                    f"Extended Offset Table has {len(table)} entries, expected {nframes_obj} "
                    "(Number of Frames)",
                    origin,
                )
            nframes = nframes_obj
            self._alloc_bounds(nframes)
            self._map_extended(table, sizes, nframes, origin)
            self.mapping = "extended"
        elif len(basic):
            if len(basic) != nframes_obj:
                raise ParseError(
                    f"Basic Offset Table has {len(basic)} entries, expected {nframes_obj} "
                    "(Number of Frames)",
                    start_pos,
                )
            nframes = nframes_obj
            self._alloc_bounds(nframes)
            self._map_basic(basic, nframes, start_pos, origin)
            self.mapping = "basic"
        else:
            nframes = nframes_obj
            self._alloc_bounds(nframes)
            if self._nfrags == nframes:
                self._map_one_to_one(nframes)
                self.mapping = "one-to-one"
            elif nframes == 1:
                self._bounds[0] = 0
                self._bounds[1] = self._nfrags
                self.mapping = "single-frame"
            else:
                self._map_markers(nframes, w.end_offset)
                self.mapping = "markers"

        self.number_of_frames = nframes
        self.basic_offsets = basic
        self.fragment_offsets = int64_table(self._offsets, self._nfrags)
        self.fragment_lengths = int64_table(self._lengths, self._nfrags)
        self.end_offset = w.end_offset
        self.frame_fragments = int64_table(self._bounds, nframes + 1)

    cdef int _alloc_bounds(self, Py_ssize_t nframes) except -1:
        self._bounds = <int64_t*>malloc((nframes + 1) * sizeof(int64_t))
        if self._bounds == NULL:
            raise MemoryError()
        return 0

    cdef void _map_one_to_one(self, Py_ssize_t nframes) noexcept:
        cdef Py_ssize_t k
        for k in range(nframes + 1):
            self._bounds[k] = k

    cdef int _map_extended(self, carray.array table, carray.array sizes, Py_ssize_t nframes,
                           Py_ssize_t origin) except -1:
        # PS3.3 C.7.6.3.1.8: each frame is exactly one fragment; offsets point at item tags.
        cdef const uint64_t* offs = <const uint64_t*>table.data.as_voidptr
        cdef const uint64_t* lens = <const uint64_t*>sizes.data.as_voidptr
        cdef Py_ssize_t k
        cdef int64_t item
        if self._nfrags != nframes:
            raise ParseError(
                f"Extended Offset Table needs one fragment per frame: {nframes} frames, "
                f"{self._nfrags} fragments",
                origin,
            )
        for k in range(nframes):
            item = self._offsets[k] - 8
            if offs[k] != <uint64_t>(item - origin):
                raise ParseError(
                    f"Extended Offset Table entry {k} ({offs[k]}) does not point at the item "
                    f"tag of fragment {k} (expected {item - origin})",
                    origin,
                )
            if lens[k] != <uint64_t>self._lengths[k]:
                raise ParseError(
                    f"Extended Offset Table Lengths entry {k} ({lens[k]}) differs from the "
                    f"fragment length {self._lengths[k]}",
                    item,
                )
        self._map_one_to_one(nframes)
        return 0

    cdef int _map_basic(self, carray.array basic, Py_ssize_t nframes, Py_ssize_t start,
                        Py_ssize_t origin) except -1:
        # PS3.5 A.4: one BOT entry per frame, pointing at the item tag of its first fragment.
        cdef const uint64_t* bot = <const uint64_t*>basic.data.as_voidptr
        cdef Py_ssize_t k
        cdef Py_ssize_t j = 0
        cdef Py_ssize_t nfrags = self._nfrags
        cdef int64_t value
        cdef Py_ssize_t entry
        for k in range(nframes):
            # BOT entries are uint32, so int64 holds them exactly.
            value = <int64_t>bot[k]
            entry = start + 8 + 4 * k
            if k == 0:
                if value != 0:
                    raise ParseError(f"Basic Offset Table entry 0 is {value}, expected 0", entry)
            elif value <= <int64_t>bot[k - 1]:
                raise ParseError(
                    f"Basic Offset Table entry {k} ({value}) is not greater than entry {k - 1} "
                    f"({bot[k - 1]})",
                    entry,
                )
            while j < nfrags and self._offsets[j] - 8 - origin < value:
                j += 1
            if j == nfrags or self._offsets[j] - 8 - origin != value:
                raise ParseError(
                    f"Basic Offset Table entry {k} ({value}) does not point at a fragment item tag",
                    entry,
                )
            self._bounds[k] = j
        self._bounds[nframes] = nfrags
        return 0

    cdef int _map_markers(self, Py_ssize_t nframes, Py_ssize_t end_offset) except -1:
        cdef const unsigned char* data = &self._data[0]
        cdef Py_ssize_t nfrags = self._nfrags
        cdef Py_ssize_t first_left, where
        cdef Py_ssize_t done = 0
        cdef Py_ssize_t excess
        self._bounds[0] = 0
        # Trailing-zero scans can cover whole fragments: run without the GIL on large values.
        if end_offset - self._offsets[0] >= NOGIL_THRESHOLD:
            with nogil:
                excess = scan_markers(data, self._offsets, self._lengths, nfrags, nframes,
                                      self._bounds, &done)
        else:
            excess = scan_markers(data, self._offsets, self._lengths, nfrags, nframes,
                                  self._bounds, &done)
        if excess >= 0:
            raise ParseError(
                f"end-of-image markers (FF D9) delimit more than {nframes} frames",
                self._offsets[excess] - 8,
            )
        if done < nframes or self._bounds[nframes] != nfrags:
            first_left = self._bounds[done]
            where = self._offsets[first_left] - 8 if first_left < nfrags else end_offset - 8
            raise ParseError(
                f"end-of-image markers (FF D9) delimit {done} frames, expected {nframes}, "
                f"with {nfrags - first_left} fragments left over",
                where,
            )
        return 0

    cdef Py_ssize_t _index(self, object index) except -1:
        k = PyNumber_Index(index)
        if k < 0 or k >= self.number_of_frames:
            raise IndexError(f"frame index {k} out of range 0..{self.number_of_frames - 1}")
        return k

    def frame(self, index):
        """frame(index) -> memoryview | bytes

        Frame ``index`` (0-based): a zero-copy view when it is one fragment, else new bytes.
        """
        cdef Py_ssize_t k = self._index(index)
        cdef int64_t first = self._bounds[k]
        cdef int64_t last = self._bounds[k + 1]
        cdef int64_t j
        cdef Py_ssize_t total = 0
        cdef const unsigned char* src
        cdef char* dst
        if last - first == 1:
            return self._view[self._offsets[first]:self._offsets[first] + self._lengths[first]]
        for j in range(first, last):
            total += self._lengths[j]
        out = PyBytes_FromStringAndSize(NULL, total)
        dst = PyBytes_AS_STRING(out)
        src = &self._data[0]
        if total >= NOGIL_THRESHOLD:
            with nogil:
                join_fragments(dst, src, self._offsets, self._lengths, first, last)
        else:
            join_fragments(dst, src, self._offsets, self._lengths, first, last)
        return out

    def fragment_ranges(self, index):
        """fragment_ranges(index) -> list[tuple[int, int]]

        Absolute ``(start, end)`` of each fragment value of frame ``index``.
        """
        cdef Py_ssize_t k = self._index(index)
        return [
            (self._offsets[j], self._offsets[j] + self._lengths[j])
            for j in range(self._bounds[k], self._bounds[k + 1])
        ]


cdef Py_ssize_t scan_markers(const unsigned char* data, const int64_t* offsets,
                             const int64_t* lengths, Py_ssize_t nfrags, Py_ssize_t nframes,
                             int64_t* bounds, Py_ssize_t* done) noexcept nogil:
    # Close a frame after each fragment ending in EOI/EOC; return the index of a marker
    # fragment beyond `nframes` frames, else -1.
    cdef Py_ssize_t j
    for j in range(nfrags):
        if ends_with_eoi(data + offsets[j], lengths[j]):
            if done[0] == nframes:
                return j
            done[0] += 1
            bounds[done[0]] = j + 1
    return -1


cdef void join_fragments(char* dst, const unsigned char* src, const int64_t* offsets,
                         const int64_t* lengths, int64_t first, int64_t last) noexcept nogil:
    cdef int64_t j
    for j in range(first, last):
        memcpy(dst, src + offsets[j], lengths[j])
        dst += lengths[j]


def encapsulate(frames, *, extended=False):
    """encapsulate(frames, *, extended=False) -> bytes | tuple[bytes, bytes, bytes]

    Build an encapsulated Pixel Data value from frames of fragments (PS3.5 A.4); see
    ``dicomaccel._encaps_py.encapsulate``.
    """
    cdef bint ext = bool(extended)
    cdef Py_ssize_t size, nfrags, nframes, total, k, j, last, pos
    cdef const char** ptrs = NULL
    cdef Py_ssize_t* sizes = NULL
    cdef Py_ssize_t* counts = NULL
    cdef unsigned char* dst
    cdef unsigned char* eot
    cdef unsigned char* eotl

    # Pass 1 (with the GIL): validate in the twin's order and keep every fragment alive.
    keep = []
    frame_counts = []
    value = offsets_out = lengths_out = None
    for k_obj, frame in enumerate(frames):
        if isinstance(frame, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"frame {k_obj} is a bytes-like object; each frame must be a sequence of fragments"
            )
        nfrags = 0
        for j_obj, fragment in enumerate(frame):
            if PyBytes_CheckExact(fragment):
                size = PyBytes_GET_SIZE(fragment)
                held = fragment
            else:
                held = memoryview(fragment)
                if not held.c_contiguous:
                    raise TypeError(f"fragment {j_obj} of frame {k_obj} is not C-contiguous")
                size = held.nbytes
            if size & 1:
                raise ValueError(
                    f"fragment {j_obj} of frame {k_obj} has odd length {size}; PS3.5 A.4 items "
                    "have even length"
                )
            if size > MAX_ITEM_LENGTH:
                raise ValueError(
                    f"fragment {j_obj} of frame {k_obj} is {size} bytes; an item holds at most "
                    f"{MAX_ITEM_LENGTH}"
                )
            keep.append(held)
            nfrags += 1
        if nfrags == 0:
            raise ValueError(f"frame {k_obj} has no fragments")
        if ext and nfrags != 1:
            raise ValueError(
                f"frame {k_obj} has {nfrags} fragments; the Extended Offset Table needs exactly "
                "one fragment per frame"
            )
        frame_counts.append(nfrags)
    nframes = len(frame_counts)
    if nframes == 0:
        raise ValueError("no frames to encapsulate")
    nfrags = len(keep)

    try:
        ptrs = <const char**>malloc(nfrags * sizeof(char*))
        sizes = <Py_ssize_t*>malloc(nfrags * sizeof(Py_ssize_t))
        counts = <Py_ssize_t*>malloc(nframes * sizeof(Py_ssize_t))
        if ptrs == NULL or sizes == NULL or counts == NULL:
            raise MemoryError()
        for j in range(nfrags):
            held = keep[j]
            if PyBytes_CheckExact(held):
                ptrs[j] = PyBytes_AS_STRING(held)
                sizes[j] = PyBytes_GET_SIZE(held)
            else:
                ptrs[j] = <const char*>PyMemoryView_GET_BUFFER(held).buf
                sizes[j] = PyMemoryView_GET_BUFFER(held).len
        for k in range(nframes):
            counts[k] = frame_counts[k]

        # Frame start offsets from the first item after the BOT (PS3.5 A.4); the BOT holds
        # uint32, so a start past 2**32 - 1 needs the Extended Offset Table.
        if not ext:
            pos = 0
            j = 0
            for k in range(nframes):
                if pos > MAX_BOT_OFFSET:
                    raise ValueError(
                        f"Basic Offset Table offset {pos} of frame {k} exceeds {MAX_BOT_OFFSET}; "
                        "use extended=True"
                    )
                last = j + counts[k]
                while j < last:
                    pos += 8 + sizes[j]
                    j += 1
        total = 16 + (0 if ext else 4 * nframes)
        for j in range(nfrags):
            total += 8 + sizes[j]

        value = PyBytes_FromStringAndSize(NULL, total)
        dst = <unsigned char*>PyBytes_AS_STRING(value)
        if ext:
            offsets_out = PyBytes_FromStringAndSize(NULL, 8 * nframes)
            lengths_out = PyBytes_FromStringAndSize(NULL, 8 * nframes)
            eot = <unsigned char*>PyBytes_AS_STRING(offsets_out)
            eotl = <unsigned char*>PyBytes_AS_STRING(lengths_out)
        else:
            eot = NULL
            eotl = NULL
        if total >= NOGIL_THRESHOLD:
            with nogil:
                write_value(dst, ptrs, sizes, counts, nframes, eot, eotl)
        else:
            write_value(dst, ptrs, sizes, counts, nframes, eot, eotl)
    finally:
        free(ptrs)
        free(sizes)
        free(counts)
    if ext:
        return value, offsets_out, lengths_out
    return value


cdef void write_value(unsigned char* dst, const char** ptrs, const Py_ssize_t* sizes,
                      const Py_ssize_t* counts, Py_ssize_t nframes, unsigned char* eot,
                      unsigned char* eotl) noexcept nogil:
    # eot == NULL: Basic Offset Table with one uint32 per frame; else an empty BOT and the
    # Extended Offset Table and Lengths as little-endian uint64 (PS3.3 C.7.6.3.1.8).
    cdef Py_ssize_t k, last
    cdef Py_ssize_t j = 0
    cdef Py_ssize_t rel = 0
    cdef unsigned char* bot = dst + 8
    put_u32le(dst, ITEM_TAG)
    put_u32le(dst + 4, 0 if eot != NULL else <uint32_t>(4 * nframes))
    dst += 8 if eot != NULL else 8 + 4 * nframes
    for k in range(nframes):
        if eot != NULL:
            put_u64le(eot + 8 * k, <uint64_t>rel)
            put_u64le(eotl + 8 * k, <uint64_t>sizes[j])
        else:
            put_u32le(bot + 4 * k, <uint32_t>rel)
        last = j + counts[k]
        while j < last:
            put_u32le(dst, ITEM_TAG)
            put_u32le(dst + 4, <uint32_t>sizes[j])
            memcpy(dst + 8, ptrs[j], sizes[j])
            dst += 8 + sizes[j]
            rel += 8 + sizes[j]
            j += 1
    put_u32le(dst, SEQ_DELIM_TAG)
    put_u32le(dst + 4, 0)
