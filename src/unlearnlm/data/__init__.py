"""Inputs: reading and splitting texts, neighbours, evaluation sets, demo records, batching."""
