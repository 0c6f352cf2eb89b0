"""Benchmarks of rai-middleware: ``python -m benchmarks`` (see ``benchmarks/README.md``)."""
