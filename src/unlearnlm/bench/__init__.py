"""Benchmark protocol (runner) and its results: tables, claims, plot."""
