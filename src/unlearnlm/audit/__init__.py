"""The robustness audit: attacks that try to bring forgotten text back, and their scores."""
