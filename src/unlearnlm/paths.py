"""Where unlearnlm finds shared data and keeps its cache.

Two settings, both environment variables:

- ``UNLEARNLM_DATA``: the offline data folder (extraction benchmark, evaluation sets, tokenizers).
  Default: ``../shared/data`` beside the project checkout when it exists.
- ``UNLEARNLM_CACHE``: converted models and other derived files. Default: ``~/.cache/unlearnlm``.
"""

from __future__ import annotations

import os
from pathlib import Path

from unlearnlm.errors import UnlearnError

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def data_root(required: bool = True) -> Path | None:
    """The shared data folder, from ``UNLEARNLM_DATA`` or ``../shared/data``."""
    env = os.environ.get("UNLEARNLM_DATA")
    candidates = [Path(env)] if env else [_PROJECT_ROOT.parent / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path
    if required:
        raise UnlearnError(
            f"data folder not found (looked at {candidates[0]}); "
            "set UNLEARNLM_DATA to the folder holding lm_extraction/, eval/ and tokenizers/"
        )
    return None


def cache_root() -> Path:
    """The cache folder, from ``UNLEARNLM_CACHE`` or ``~/.cache/unlearnlm``; created on use."""
    path = Path(os.environ.get("UNLEARNLM_CACHE", Path.home() / ".cache" / "unlearnlm"))
    path.mkdir(parents=True, exist_ok=True)
    return path
