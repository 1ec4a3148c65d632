"""Checkpoints for resuming a killed run, and in-memory snapshots for the collapse guard.

A run keeps its work in ``.<out name>.partial/`` beside the output directory. After every
epoch it writes ``checkpoint.pt`` there (through a temporary file and a rename, so a kill at any
moment leaves the previous checkpoint intact): the trainable parameters, the optimiser state, the
active samples and the run record so far. ``unlearnlm unlearn --resume OUT`` reloads the input
model, puts these back and carries on from the next epoch. Frozen parameters are not saved: they
equal the input model's.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch

from unlearnlm.errors import UnlearnError
from unlearnlm.rundir import atomic_path

CHECKPOINT = "checkpoint.pt"


def partial_dir(out: str | Path) -> Path:
    out = Path(out).expanduser().resolve()
    return out.parent / f".{out.name}.partial"


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the parameters that train."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
            if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device))


def snapshot(model, optimizer) -> dict:
    """The last good state, kept in memory for a rollback."""
    return {"params": trainable_state(model), "optimizer": copy.deepcopy(optimizer.state_dict())}


def restore(model, optimizer, snap: dict) -> None:
    load_trainable_state(model, snap["params"])
    optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))


def save_checkpoint(out: str | Path, model, optimizer, state: dict) -> Path:
    """Write the checkpoint of a finished epoch atomically."""
    folder = partial_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {**state, "params": trainable_state(model), "optimizer": optimizer.state_dict()}
    with atomic_path(folder / CHECKPOINT) as temporary:
        torch.save(payload, temporary)
    return folder / CHECKPOINT


def load_checkpoint(out: str | Path) -> dict:
    path = partial_dir(out) / CHECKPOINT
    if not path.is_file():
        raise UnlearnError(
            f"nothing to resume for {out}: no checkpoint at {path} (a run writes one after each "
            "epoch; start the run again without --resume)"
        )
    try:  # tensors, numbers, strings, lists and dicts only: no pickled code is run
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise UnlearnError(f"checkpoint {path} is unreadable ({type(exc).__name__}); "
                           "start the run again without --resume") from exc


def remove_partial(out: str | Path) -> None:
    shutil.rmtree(partial_dir(out), ignore_errors=True)
