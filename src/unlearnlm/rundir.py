"""The output directory of a run: checked before any work, written atomically at the end.

Nothing is written until the run has finished: ``lm.loading.save_model`` puts the model and
``run.json`` into a temporary folder beside ``out`` which then replaces it (``replace_dir``), so
``out`` holds either a complete run or nothing. The input model's directory is never a valid
output.

Every file the package writes goes through ``atomic_path`` (a temporary file beside the target,
renamed onto it once complete), through ``write_text_atomic`` / ``write_json`` built on it, or,
for a folder, through ``replace_dir``: a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from unlearnlm.errors import UnlearnError


def environment_versions() -> dict[str, str]:
    """Versions that decide what a run computes, for the audit trail."""
    import accelerate
    import torch
    import transformers

    from unlearnlm import __version__

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "transformers": str(transformers.__version__),
        "accelerate": str(accelerate.__version__),
        "unlearnlm": __version__,
        "platform": platform.platform(),
    }


def _is_within(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


@dataclass
class RunDir:
    """Where a run's results go; see the module docstring."""

    out: Path
    overwrite: bool = False

    @classmethod
    def create(cls, out: str | Path, model: str, overwrite: bool = False) -> RunDir:
        """Check ``out`` before any work: not a file, empty (or ``overwrite``), not the input."""
        out = Path(out).expanduser().resolve()
        if out.exists() and not out.is_dir():
            raise UnlearnError(f"output {out} exists and is a file; give a directory path")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise UnlearnError(
                f"output directory {out} is not empty; choose another --out or pass --overwrite"
            )
        model_path = Path(str(model)).expanduser()
        if model_path.exists():
            cls._refuse_input(out, model_path.resolve())
        return cls(out, overwrite)

    @staticmethod
    def _refuse_input(out: Path, model_dir: Path) -> None:
        model_dir = model_dir if model_dir.is_dir() else model_dir.parent
        if _is_within(out, model_dir) or _is_within(model_dir, out):
            raise UnlearnError(
                f"output directory {out} overlaps the input model at {model_dir}; the input model "
                "is never modified: choose an --out outside it"
            )

    def check_not_input(self, model_path: str) -> None:
        path = Path(model_path).expanduser()
        if path.exists():
            self._refuse_input(self.out, path.resolve())


def replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, replacing what was there only once ``new`` is complete."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder, same suffix) to write to; renamed onto
    ``path`` when the block ends normally, deleted when it raises. The folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                                    dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: dict) -> Path:
    """Write ``data`` as indented JSON (non-ASCII kept as is) through ``atomic_path``."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))
