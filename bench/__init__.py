"""Benchmarks and evaluation harnesses (`make bench`, `make eval`); results go to bench/results/."""
