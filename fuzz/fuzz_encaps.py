"""Differential fuzzing of the encapsulated Pixel Data walker (PS3.5 A.4): ``parse_items``
and ``EncapsulatedFrames`` (Basic and Extended Offset Tables, end-of-image markers) on
arbitrary bytes; both implementations must give the same tables and frames, or the same
error at the same offset."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from common import main, same


def frames(module, value: bytes, n: int, eot):
    ef = module.EncapsulatedFrames(value, n, extended_offsets=eot[0] if eot else None,
                                   extended_lengths=eot[1] if eot else None)
    return [bytes(ef.frame(k)) for k in range(ef.number_of_frames)]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    n = fdp.ConsumeIntInRange(1, 8)
    eot = None
    if fdp.ConsumeBool():
        eot = (fdp.ConsumeBytes(8 * n), fdp.ConsumeBytes(8 * n))
    value = fdp.ConsumeBytes(fdp.remaining_bytes())
    same("encaps", lambda m: m.parse_items(value))
    same("encaps", lambda m: frames(m, value, n, eot))


if __name__ == "__main__":
    main(test_one_input)
