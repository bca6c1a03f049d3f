"""Benchmarks (``make bench``, ``make recipe``): they measure the library and are never imported by it."""
