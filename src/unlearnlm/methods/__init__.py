"""Unlearning methods: pure loss terms, and methods as weights of those terms."""
