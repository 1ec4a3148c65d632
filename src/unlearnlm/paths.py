"""Where unlearnlm finds shared data and keeps its cache.

Two settings, both environment variables:

- ``UNLEARNLM_DATA``: the offline data folder (extraction benchmark, evaluation sets, tokenizers).
  Default: ``../shared/data`` beside the project checkout when it exists.
- ``UNLEARNLM_CACHE``: converted models, downloaded data sets (``data/``) and other derived files.
  Default: ``~/.cache/unlearnlm``.

A data file is looked up in the data folder first, then in the cache's ``data/`` folder, where
``unlearnlm data fetch NAME`` puts what it downloads (:func:`data_file`); both use the same
layout, so ``eval/wikitext.csv`` is ``$UNLEARNLM_DATA/eval/wikitext.csv`` or
``$UNLEARNLM_CACHE/data/eval/wikitext.csv``.
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


def data_cache() -> Path:
    """``cache_root()/data``: where ``unlearnlm data fetch`` writes, in the data folder's layout
    (not created here)."""
    return cache_root() / "data"


def find_data(relpath: str) -> Path | None:
    """``relpath`` (a file or folder) in the data folder, else in the data cache, else None."""
    root = data_root(required=False)
    for base in ([root] if root else []) + [data_cache()]:
        path = base / relpath
        if path.exists():
            return path
    return None


def data_file(relpath: str, name: str | None) -> Path:
    """``relpath`` in the data folder or the data cache; when it is in neither, an UnlearnError
    naming the command that downloads it (``unlearnlm data fetch NAME``), or, for a set that
    cannot be downloaded (``name`` None), the data folder setting."""
    path = find_data(relpath)
    if path is not None:
        return path
    root = data_root(required=False)
    looked = f"{root} and {data_cache()}" if root else f"{data_cache()} (no data folder)"
    if name:
        fix = f"run `unlearnlm data fetch {name}` or set UNLEARNLM_DATA to a folder that has it"
    else:
        fix = "it cannot be downloaded by unlearnlm (see docs/data.md); set UNLEARNLM_DATA to " \
              "a folder that has it"
    raise UnlearnError(f"data file {relpath} not found (looked in {looked}); {fix}")
