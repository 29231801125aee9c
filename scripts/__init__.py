"""Scripts: the test-model generator (importable by tests) and, later, benchmarks."""
