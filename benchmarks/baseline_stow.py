"""The ingest baseline: a minimal pure-Python STOW-RS handler, the way one is often first written.

It buffers the whole body, splits it with the stdlib ``email`` parser, reads each part with
pydicom and writes it to disk with fsync. Run under the same uvicorn as dicomaccel:

    python -m benchmarks.baseline_stow --port 8081 --data /tmp/baseline
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.policy
import io
import json
import os
from pathlib import Path

import pydicom
import uvicorn
import uvloop


def create_app(data: Path):
    data.mkdir(parents=True, exist_ok=True)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode()
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + bytes(body)
        )
        stored = []
        for part in msg.iter_parts():
            raw = part.get_payload(decode=True)
            ds = pydicom.dcmread(io.BytesIO(raw))
            path = data / f"{ds.SOPInstanceUID}.dcm"
            with open(path, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            stored.append({"00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]}})
        out = json.dumps({"00081199": {"vr": "SQ", "Value": stored}}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/dicom+json"),
                                (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(create_app(args.data), host="127.0.0.1", port=args.port, loop="uvloop",
                            http="httptools", log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    async def run():
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        print(f"baseline: http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", flush=True)
        await task

    uvloop.run(run())


if __name__ == "__main__":
    main()
