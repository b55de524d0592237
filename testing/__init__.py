"""Models for tests and benchmarks (fetched from PyPI or synthesized); not used at runtime."""
