"""The Prometheus metrics of one dicomaccel process (``GET /metrics``, text format 0.0.4).

With ``--workers N`` each worker keeps its own figures and a scrape reaches one of them; the
``worker`` label (its process ID) tells them apart, so a scraper that connects several times
sees all of them. Instance outcomes carry the Warning or Failure Reason as a hex code.
"""

from __future__ import annotations

import functools
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["REGISTRY", "render", "STOW_REQUESTS", "STOW_INSTANCES", "BYTES_IN", "BYTES_OUT",
           "STORE_SECONDS", "QUEUE_DEPTH", "QUEUE_WAIT", "CGET_SUBOPERATIONS", "CSTORE_INSTANCES", "ASSOCIATIONS",
           "FREE_BYTES", "WORKER", "child"]

REGISTRY = CollectorRegistry(auto_describe=True)
WORKER = str(os.getpid())


def _forked() -> None:
    # `dicomaccel serve --workers N` imports this module in the supervisor and forks: each
    # worker's label is its own process ID, not the supervisor's.
    global WORKER
    WORKER = str(os.getpid())
    child.cache_clear()


os.register_at_fork(after_in_child=_forked)


STOW_REQUESTS = Counter("dicomaccel_stow_requests", "STOW-RS requests answered, by HTTP status",
                        ["worker", "status"], registry=REGISTRY)
STOW_INSTANCES = Counter("dicomaccel_stow_instances", "Instances in STOW-RS requests, by outcome and reason",
                         ["worker", "outcome", "reason"], registry=REGISTRY)
BYTES_IN = Counter("dicomaccel_bytes_received", "Request body bytes received over HTTP", ["worker"],
                   registry=REGISTRY)
BYTES_OUT = Counter("dicomaccel_bytes_sent", "Data set bytes sent in C-GET sub-operations", ["worker"],
                    registry=REGISTRY)
STORE_SECONDS = Histogram("dicomaccel_store_seconds", "STOW-RS request time, slot wait included",
                          ["worker"], registry=REGISTRY,
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
QUEUE_DEPTH = Gauge("dicomaccel_store_queue_depth", "STOW-RS requests waiting for a store slot", ["worker"],
                    registry=REGISTRY)
QUEUE_WAIT = Histogram("dicomaccel_store_queue_wait_seconds", "Time a STOW-RS request waited for its slot",
                       ["worker"], registry=REGISTRY, buckets=(0.001, 0.01, 0.1, 1, 5, 10, 30, 60))
CGET_SUBOPERATIONS = Counter("dicomaccel_cget_suboperations", "C-GET C-STORE sub-operations, by status",
                             ["worker", "status"], registry=REGISTRY)
CSTORE_INSTANCES = Counter("dicomaccel_cstore_instances", "C-STORE-RQs answered, by outcome and status",
                           ["worker", "outcome", "status"], registry=REGISTRY)
ASSOCIATIONS = Counter("dicomaccel_associations", "DICOM associations, by outcome (accepted, rejected)",
                       ["worker", "outcome"], registry=REGISTRY)
FREE_BYTES = Gauge("dicomaccel_free_bytes", "Free space of the archive's file system", ["worker"],
                   registry=REGISTRY)


@functools.lru_cache(maxsize=512)
def child(metric, *labels: str):
    """``metric``'s child for this worker and ``labels``, looked up once (``labels()`` takes a
    lock and builds a key on every call: several times per request or sub-operation)."""
    return metric.labels(WORKER, *labels)


def render(free_bytes: int | None = None) -> bytes:
    """The registry in the Prometheus text format, with the free space read now."""
    if free_bytes is not None:
        child(FREE_BYTES).set(free_bytes)
    return generate_latest(REGISTRY)
