"""The language model: loading and saving, batched generation."""
