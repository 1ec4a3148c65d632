"""Reports of a run and of the demo, rendered from JSON (no model is loaded here)."""
