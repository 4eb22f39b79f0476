"""The benchmark harness of ``benchmarks/run.py`` (see ``benchmarks/README.md``)."""
