"""Differential fuzzing of native frame geometry (``NativeFrames``): arbitrary geometry over
an arbitrary buffer; both implementations must accept or refuse the same geometries and give
the same frame bytes."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from common import main, same


def frames(module, buffer: bytes, rows, columns, bits, samples, n, photometric, offset, length):
    nf = module.NativeFrames(buffer, rows=rows, columns=columns, bits_allocated=bits, samples_per_pixel=samples,
                             number_of_frames=n, photometric_interpretation=photometric, offset=offset,
                             length=length)
    return [bytes(nf.frame(k)) for k in range(min(n, 4))]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    rows, columns = fdp.ConsumeIntInRange(0, 40), fdp.ConsumeIntInRange(0, 40)
    bits = fdp.PickValueInList([1, 8, 16, 32, 64, 12, 0])
    samples = fdp.PickValueInList([1, 3, 2])
    n = fdp.ConsumeIntInRange(0, 9)
    photometric = fdp.PickValueInList(["", "MONOCHROME2", "RGB", "YBR_FULL_422", "PALETTE COLOR"])
    offset = fdp.ConsumeIntInRange(0, 64)
    length = fdp.PickValueInList([-1, 0, 7, 64, 4096])
    buffer = fdp.ConsumeBytes(fdp.remaining_bytes())
    same("frames", lambda m: frames(m, buffer, rows, columns, bits, samples, n, photometric, offset, length))


if __name__ == "__main__":
    main(test_one_input)
