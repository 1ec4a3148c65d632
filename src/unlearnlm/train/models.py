"""What trains, the frozen reference beside it, and the optimiser, prepared for the devices.

``prepare_training`` is the one place ``unlearn`` and ``finetune`` turn a loaded model into a
trainable policy. What trains: every weight, the last N blocks (``trainable_layers``) or LoRA
adapters (``lora_rank``). The reference (the frozen original that the KL, NPO, DPO, UNDIAL and RMU
terms compare with) costs as little memory as the mode allows:

- LoRA: the same module with its adapters switched off (``lm.lora.AdapterOff``), no copy at all;
- the last N blocks: a copy that shares every frozen tensor with the policy and copies only the
  trained blocks;
- every weight, or weights sharded over processes (ZeRO-3, FSDP): a whole copy.

The reference is never given to the accelerator: it stays outside the optimiser and outside any
sharding, on the process's device. The policy and its optimiser go through
``accelerator.prepare`` (DDP over several processes, DeepSpeed or FSDP as ``accelerate launch``
configured it). ``gradient_checkpointing`` recomputes each block's activations in the backward
pass (non-reentrant, so it works with frozen embeddings and adapters).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from unlearnlm.lm.loading import train_last_layers
from unlearnlm.lm.lora import AdapterOff, add_lora, is_adapted

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A policy ready to train: the wrapped model, its optimiser and the frozen reference."""

    accelerator: Any
    model: Any  # as the accelerator wrapped it (DDP, DeepSpeed engine, FSDP, or the model)
    optimizer: Any
    reference: Any  # called like a model; None when no loss term reads it
    trainable_parameters: int

    @property
    def unwrapped(self):
        """The model itself, for generation, scoring and saving."""
        return self.accelerator.unwrap_model(self.model)


def make_accelerator(mixed_precision: str = "no", cpu: bool = False,
                     unused_parameters: bool = False):
    """An ``Accelerator``; under ``accelerate launch`` (or ``torchrun``) it joins the launched
    processes and takes the DeepSpeed or FSDP configuration from the launcher. Several processes
    on a machine without a GPU run on the CPU and talk over gloo. ``unused_parameters``: some
    trainable weights may get no gradient in a step (a loss on one block's hidden states leaves
    the blocks above it out), which DDP must then be told to look for."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if several and not deepspeed and not torch.cuda.is_available():
        cpu = True
    handlers = ([DistributedDataParallelKwargs(find_unused_parameters=True)]
                if unused_parameters else [])
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision, kwargs_handlers=handlers)
    _load_models_whole()
    if not several and os.environ.get("MASTER_ADDR") and "ACCELERATE_MIXED_PRECISION" in os.environ:
        log.warning("accelerate launch was asked for several processes but started one (its "
                    "launcher does so on a machine without GPUs): add --multi_gpu to start them")
    return accelerator


def _load_models_whole() -> None:
    """Under ZeRO-3 accelerate tells transformers to shard every model it loads from then on;
    undo that, so that the policy, the reference and the drop test's scorer and embedder load
    whole. DeepSpeed shards the policy when ``accelerator.prepare`` hands it over; a sharded
    scorer or embedder could not run outside the DeepSpeed engine."""
    from transformers.integrations import deepspeed as hf_deepspeed

    if hf_deepspeed.is_deepspeed_zero3_enabled():
        hf_deepspeed.unset_hf_deepspeed_config()


def shards_parameters(accelerator) -> bool:
    """Whether each process holds only a shard of the weights (ZeRO-3 or FSDP)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return kind == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def shards_optimizer(accelerator) -> bool:
    """Whether the optimiser state is split over processes (DeepSpeed, FSDP): then no process
    holds a state it could checkpoint or roll back to on its own."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def full_state_dict(prepared_model, accelerator) -> dict | None:
    """The whole weights gathered from every process when they are sharded (call it on every
    process); None when each process holds them whole."""
    return accelerator.get_state_dict(prepared_model) if shards_parameters(accelerator) else None


def prepare_training(
    model,
    accelerator,
    settings,
    *,
    reference: bool,
    optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    micro_batch: int = 1,
) -> Prepared:
    """Make ``model`` trainable as ``settings`` say (``lora_rank``, ``lora_alpha``,
    ``lora_target_modules``, ``trainable_layers``, ``gradient_checkpointing``), build the
    reference when ``reference``, and prepare policy and ``optimizer(trainable parameters)``.
    ``micro_batch``: rows per process and step, for a DeepSpeed configuration that leaves it
    to us ("auto")."""
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings.lora_rank is not None:
        model = add_lora(model, settings.lora_rank, settings.lora_alpha,
                         target_modules=settings.lora_target_modules or None)
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = AdapterOff(model) if reference else None
    else:
        count = train_last_layers(model, settings.trainable_layers)
        frozen = (frozen_copy(model, share=not shards_parameters(accelerator))
                  if reference else None)
    _fill_deepspeed_batch(accelerator, micro_batch)
    opt = optimizer([p for p in model.parameters() if p.requires_grad])
    wrapped, opt = accelerator.prepare(model, opt)
    if isinstance(frozen, torch.nn.Module):
        frozen.to(accelerator.device)
    return Prepared(accelerator, wrapped, opt, frozen, count)


def frozen_copy(model: torch.nn.Module, share: bool = True) -> torch.nn.Module:
    """A frozen, eval-mode copy of ``model``. With ``share``, every tensor that does not train
    (frozen parameters, buffers) is the policy's own, not a copy: it cannot change, so the copy
    needs only the trainable ones."""
    memo: dict[int, Any] = {}
    if share:
        memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())
                if not t.requires_grad}
    return copy.deepcopy(model, memo).eval().requires_grad_(False)


def _fill_deepspeed_batch(accelerator, micro_batch: int) -> None:
    """DeepSpeed wants the rows per process and step; with no data loader to read it from,
    accelerate leaves "auto" in place unless we give it. Gradient clipping left to "auto" would
    become 1.0; the loop clips nothing without DeepSpeed, so it clips nothing with it either."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    config = plugin.deepspeed_config
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = 0.0
    if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        config["train_micro_batch_size_per_gpu"] = micro_batch
    if config.get("train_batch_size", "auto") == "auto":
        steps = config.get("gradient_accumulation_steps", 1)
        steps = 1 if steps == "auto" else steps
        config["train_batch_size"] = micro_batch * steps * accelerator.num_processes


def per_process(batch_size: int, processes: int) -> int:
    """Rows one process takes from a global batch of ``batch_size`` (the first ones take more)."""
    return max(1, math.ceil(batch_size / processes))


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a tensor shared twice counts once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def state_bytes(prepared: Prepared) -> dict[str, int]:
    """Bytes held by the policy's weights, their gradients, the optimiser state and the
    reference's own tensors (those it does not share with the policy)."""
    model = prepared.unwrapped
    weights = list(itertools.chain(model.parameters(), model.buffers()))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    opt_state = [v for state in prepared.optimizer.state.values() for v in state.values()
                 if torch.is_tensor(v)]
    ref = prepared.reference
    ref_tensors = (list(itertools.chain(ref.parameters(), ref.buffers()))
                   if isinstance(ref, torch.nn.Module) else [])
    shared = {t.untyped_storage().data_ptr() for t in weights}
    own = [t for t in ref_tensors if t.untyped_storage().data_ptr() not in shared]
    return {"weights": tensor_bytes(weights), "gradients": tensor_bytes(grads),
            "optimizer": tensor_bytes(opt_state), "reference": tensor_bytes(own)}


def is_lora(prepared: Prepared) -> bool:
    return is_adapted(prepared.unwrapped)
