"""End-to-end STOW-RS ingest benchmark: dicomaccel against the pure-Python baseline, same run.

    python -m benchmarks.ingest [--ct 200] [--multiframe 4] [--fsync always]

Workloads: N CT instances (512x512x16 bit, ~0.5 MB) one per request and 20 per request, with
1 and 4 concurrent clients; four native multi-frame instances of 85-130 MB. Prints instances/s,
MB/s and server peak RSS (VmHWM, reset before each workload) for both servers and the ratio.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from dicomaccel.testing import files as dicomgen  # noqa: E402

BOUNDARY = "dicomaccel-bench-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(parts: list[bytes]) -> bytes:
    out = []
    for p in parts:
        out.append(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.append(p)
        out.append(b"\r\n")
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


class Server:
    def __init__(self, cmd: list[str], pattern: str) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.port = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(pattern, line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.stop()
            raise RuntimeError(f"server {cmd} did not start")

    def reset_peak(self) -> None:
        # Writing 5 to clear_refs resets VmHWM (proc(5)).
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def peak_rss_mib(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def upload(port: int, bodies: list[bytes], clients: int) -> float:
    """Send every body (round robin over ``clients`` keep-alive connections); return seconds."""
    errors: list[str] = []

    def worker(mine: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for body in mine:
            conn.request("POST", "/dicomweb/studies", body=body, headers={"Content-Type": CONTENT_TYPE})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors.append(f"HTTP {resp.status}")
        conn.close()

    threads = [threading.Thread(target=worker, args=(bodies[i::clients],)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} uploads failed: {errors[:3]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", type=int, default=200, help="CT instances (default 200)")
    parser.add_argument("--multiframe", type=int, default=4, help="multi-frame instances of 85-130 MB (default 4)")
    parser.add_argument("--fsync", choices=("always", "never"), default="always")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()

    print(f"generating {args.ct} CT instances and {args.multiframe} multi-frame instances ...", flush=True)
    _, ct = dicomgen.ct_series(args.ct)
    frames = [170, 200, 225, 250][: args.multiframe]  # 512x512x16 bit: 89-131 MB
    big = [dicomgen.multiframe_instance(n, 512, 512) for n in frames]
    workloads = [
        ("CT, 1 per request, 1 client", [multipart([c]) for c in ct], 1, len(ct)),
        ("CT, 1 per request, 4 clients", [multipart([c]) for c in ct], 4, len(ct)),
        ("CT, 20 per request, 1 client", [multipart(ct[i:i + 20]) for i in range(0, len(ct), 20)], 1, len(ct)),
        ("CT, 20 per request, 4 clients", [multipart(ct[i:i + 20]) for i in range(0, len(ct), 20)], 4, len(ct)),
        ("multi-frame 85-131 MB, 1 client", [multipart([b]) for b in big], 1, len(big)),
    ]
    work = Path(tempfile.mkdtemp(prefix="dicomaccel-bench-"))
    results = []
    try:
        for label, bodies, clients, count in workloads:
            nbytes = sum(len(b) for b in bodies)
            row = {"workload": label}
            for name in ("dicomaccel", "baseline"):
                if name == "baseline" and args.no_baseline:
                    continue
                data = work / name
                shutil.rmtree(data, ignore_errors=True)
                if name == "dicomaccel":
                    server = Server([sys.executable, "-m", "dicomaccel.cli", "serve", "--data", str(data),
                                     "--http-port", "0", "--fsync", args.fsync, "--log-level", "warning"],
                                    r"STOW-RS on http://[\d.]+:(\d+)")
                else:
                    server = Server([sys.executable, "-m", "benchmarks.baseline_stow", "--port", "0",
                                     "--data", str(data)], r"baseline: http://[\d.]+:(\d+)")
                try:
                    server.reset_peak()
                    elapsed = upload(server.port, bodies, clients)
                    row[name] = (count / elapsed, nbytes / elapsed / 1e6, server.peak_rss_mib())
                finally:
                    server.stop()
            results.append(row)
            ours = row["dicomaccel"]
            line = f"{label}: dicomaccel {ours[0]:.0f} inst/s {ours[1]:.0f} MB/s peak RSS {ours[2]:.0f} MiB"
            if "baseline" in row:
                base = row["baseline"]
                line += (f" | baseline {base[0]:.0f} inst/s {base[1]:.0f} MB/s peak RSS {base[2]:.0f} MiB"
                         f" | ratio {ours[0] / base[0]:.1f}x")
            print(line, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"| workload (fsync {args.fsync}) | dicomaccel inst/s | MB/s | peak RSS MiB | baseline inst/s | MB/s | peak RSS MiB | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        o = row["dicomaccel"]
        b = row.get("baseline")
        tail = f"{b[0]:.0f} | {b[1]:.0f} | {b[2]:.0f} | {o[0] / b[0]:.1f}x" if b else "- | - | - | -"
        print(f"| {row['workload']} | {o[0]:.0f} | {o[1]:.0f} | {o[2]:.0f} | {tail} |")


if __name__ == "__main__":
    main()
