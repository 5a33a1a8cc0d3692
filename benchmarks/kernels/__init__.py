"""Kernel benchmarks: dicomaccel's three kernels, compiled and pure-Python twin, each against
its baseline, in one pytest-benchmark run.

    python -m benchmarks.kernels [--json PATH] [--quick] [pytest args]
    python -m benchmarks.kernels --from-json PATH

``test_multipart.py``, ``test_frames.py`` and ``test_encaps.py`` hold the benchmarks; every
pytest-benchmark group holds ours (both implementations, fixture ``impl``, ids ``compiled`` and
``twin``) and the baseline(s) run on the same bytes, so one JSON holds everything a ratio needs.
``workloads.py`` builds the inputs; ``table.py`` turns the JSON into the Markdown ratio table.
``--quick`` (environment ``DICOMACCEL_KERNEL_BENCH_QUICK=1``) shrinks every workload and round
count so the whole suite runs in seconds: numbers from it check the plumbing, not the speed.
"""
