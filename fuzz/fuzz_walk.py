"""Differential fuzzing of the data set walk (PS3.5 §7): the top-level elements and sequences
of arbitrary bytes, in each of the four encodings; both implementations must record the same
offsets and Pixel Data header, or raise the same error at the same offset."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from common import main, same

WANTED = frozenset((0x00080016, 0x00080018, 0x00100010, 0x00280010, 0x7FE00001))


def walked(module, data: bytes, explicit: bool, little: bool):
    found: dict = {}
    pixel = module.walk(data, 0, len(data), explicit, little, WANTED, found)
    return pixel, sorted(found.items())


def test_one_input(data: bytes) -> None:
    if not data:
        return
    explicit, little = bool(data[0] & 1), bool(data[0] & 2)
    same("walk", lambda m: walked(m, data[1:], explicit, little))


if __name__ == "__main__":
    main(test_one_input)
