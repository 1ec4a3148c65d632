"""Several processes (``accelerate launch --num_processes N -m unlearnlm unlearn ...``): how a
global batch and a round of scoring split over them, so that the run equals a one-process run
with the same seed.

Training. Every process builds the same global batch (same seed, same shuffled order, same
padding); process r takes rows r, r + N, r + 2N, ... (``shard_batches``). Each loss term is a
mean over the whole global batch: its numerator sums over the process's rows and its denominator
is the global count of target tokens (or rows) divided by N; DDP averages gradients over the N
processes, which turns the N shares back into the global mean. A process whose share is empty
(a last batch smaller than N) runs its forward on one row with weight 0, so that DDP's gradient
all-reduce still meets every process. ``mean_over_processes`` averages the reported loss values
the same way.

Scoring. ``Split.map(score, items)`` gives process r the items r, r + N, ..., gathers every
process's scores and puts them back in order, so every process sees all scores and makes the
same drop decisions. When the weights are sharded (ZeRO-3, FSDP) every forward pass needs all
processes in step, so each process scores every item instead (``Split(whole=True)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def _rows(batch: dict, kind: str) -> int:
    rows = batch["input_ids"].shape[0]
    return rows // 2 if kind == "preference" else rows  # preferred rows, then rejected rows


def shard_batches(parts: dict[str, dict], rank: int, processes: int) -> tuple[dict, bool]:
    """This process's share of every batch in ``parts`` (see the module docstring), and whether
    the share is empty (its loss then counts with weight 0)."""
    if processes == 1:
        return parts, False
    shares, empty = {}, False
    for kind, batch in parts.items():
        count = _rows(batch, kind)
        mine = list(range(rank, count, processes))
        empty = empty or not mine
        picked = mine or [0]
        if kind == "preference":
            picked = picked + [i + count for i in picked]
        full = batch["input_ids"].shape[0]
        index = torch.tensor(picked, device=batch["input_ids"].device)
        share = {name: value.index_select(0, index)
                 if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == full
                 else value for name, value in batch.items()}
        share["targets_total"] = float(batch["loss_mask"][:, 1:].sum()) / processes
        share["rows_total"] = count / processes
        shares[kind] = share
    return shares, empty


def mean_over_processes(values: dict[str, float], accelerator) -> dict[str, float]:
    """Each value averaged over the processes (every process gets the same numbers)."""
    if accelerator.num_processes == 1:
        return values
    names = sorted(values)
    local = torch.tensor([values[n] for n in names], dtype=torch.float64,
                         device=accelerator.device)
    mean = accelerator.reduce(local, reduction="mean")
    return dict(zip(names, mean.tolist()))


class Split:
    """How scoring work splits over the processes (see the module docstring)."""

    def __init__(self, accelerator, whole: bool = False) -> None:
        self.accelerator = accelerator
        self.rank = 0 if whole else accelerator.process_index
        self.processes = 1 if whole else accelerator.num_processes

    def mine(self, items: Sequence[T]) -> list[T]:
        return list(items[self.rank::self.processes])

    def gather(self, results: list[Any]) -> list[Any]:
        """Every process's ``results`` for its ``mine`` items, back in the items' order."""
        if self.processes == 1:
            return list(results)
        from accelerate.utils import gather_object

        per_process = gather_object([results])  # one list per process, in process order
        total = sum(len(r) for r in per_process)
        ordered: list[Any] = [None] * total
        for rank, shares in enumerate(per_process):
            ordered[rank::self.processes] = shares
        return ordered

    def map(self, score: Callable[[list[T]], list[R]], items: Sequence[T]) -> list[R]:
        """``score(items)``, computed share by share over the processes."""
        return self.gather(score(self.mine(items)))
