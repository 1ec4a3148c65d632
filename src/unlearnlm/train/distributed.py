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

Launching. On a machine without GPUs, ``accelerate launch --num_processes N`` without
``--multi_gpu`` starts a single process (its simple launcher, meant for MPI). ``relaunch_command``
recognises that case and gives the command that starts the N processes over gloo, which the
command line then runs in place of the one process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
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


def _requested_processes(launcher_argv: Sequence[str]) -> int | None:
    for i, token in enumerate(launcher_argv):
        value = None
        if token == "--num_processes" and i + 1 < len(launcher_argv):
            value = launcher_argv[i + 1]
        elif token.startswith("--num_processes="):
            value = token.split("=", 1)[1]
        if value is not None:
            return int(value) if value.isdigit() else None
    return None


def relaunch_command(environ: Mapping[str, str], launcher_argv: Sequence[str], gpus: int,
                     argv: Sequence[str]) -> list[str] | None:
    """The command that starts the processes ``accelerate launch`` was asked for but did not
    start, or None when nothing is missing.

    Accelerate's simple launcher (what it uses without ``--multi_gpu`` when fewer than two GPUs
    are visible) runs the script once, sets ``MASTER_ADDR`` when more than one process was asked
    for, and sets no ``WORLD_SIZE``; the number asked for is only on the launcher's own command
    line (``launcher_argv``). The returned command is accelerate's multi-process launch (torch's
    elastic launcher; gloo on the CPU) with the same precision and port, running ``unlearnlm``
    with ``argv``; its processes carry ``WORLD_SIZE``, so they do not relaunch again."""
    if gpus > 1 or "ACCELERATE_MIXED_PRECISION" not in environ or "MASTER_ADDR" not in environ:
        return None
    if any(name in environ for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK")):
        return None
    processes = _requested_processes(launcher_argv)
    if processes is None or processes < 2:
        return None
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", environ["ACCELERATE_MIXED_PRECISION"],
            "--dynamo_backend", "no", "--main_process_port", environ.get("MASTER_PORT", "29500"),
            "-m", "unlearnlm", *argv]


def launcher_argv() -> list[str]:
    """The parent process's command line (the launcher's, under ``accelerate launch``)."""
    import psutil

    try:
        return psutil.Process().parent().cmdline()
    except (psutil.Error, AttributeError):
        return []


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
