"""Benchmarks (``crossrec bench <name>``): they measure and write reports; they assert nothing."""
