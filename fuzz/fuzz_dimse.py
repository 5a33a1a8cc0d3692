"""Fuzzing of what a DIMSE peer sends before and inside an association: the A-ASSOCIATE-RQ
decoder (PS3.8 9.3.2), the command set decoder (PS3.7 E) and the C-GET Identifier decoder.
Each must return or raise its documented error (``PDUParameterError``/``ParseError``, or
``IdentifierError`` with a DIMSE status); nothing else may escape."""

from __future__ import annotations

import warnings

import atheris

with atheris.instrument_imports():
    from common import main

    from dicomaccel.dimse.messages import decode_command
    from dicomaccel.dimse.pdu import decode_associate_rq
    from dicomaccel.errors import ParseError
    from dicomaccel.retrieve.identifier import IdentifierError, decode_identifier, parse_identifier

warnings.simplefilter("ignore")  # pydicom warns about odd elements it still reads
SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
MODELS = ("1.2.840.10008.5.1.4.1.2.2.3", "1.2.840.10008.5.1.4.1.2.4.3")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 2)
    rest = fdp.ConsumeBytes(fdp.remaining_bytes())
    if which == 0:
        try:
            decode_associate_rq(memoryview(rest))
        except ParseError:
            pass
    elif which == 1:
        try:
            decode_command(rest)
        except ParseError:
            pass
    else:
        try:
            ds = decode_identifier(rest, SYNTAXES[len(rest) % 3])
            parse_identifier(MODELS[len(rest) % 2], ds)
        except IdentifierError as exc:
            assert exc.status in (0xA900, 0xC000), hex(exc.status)


if __name__ == "__main__":
    main(test_one_input)
