"""Synthetic data for demonstrations and benchmarks; the server never imports it."""
