"""Run by tests/test_sharded.py under ``accelerate launch --config_file configs/accelerate/X.yaml
--num_processes 1`` (accelerate's state is one per process, so each configuration gets a fresh
one): prepare a tiny model through ``train.models.prepare_training`` as ``unlearnlm unlearn``
does, take one unlearning step, and print what was found as one JSON line.

Usage: python sharded_check.py MODEL_DIR {full,lora}

Accelerate turns FSDP on only where GPUs are; on a CPU the launcher still sets the FSDP settings
of the configuration in the environment, and this script hands them to the accelerator itself.
"""

from __future__ import annotations

import json
import os
import sys

import torch


def _accelerator():
    from unlearnlm.train.models import make_accelerator

    accelerator = make_accelerator()
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and \
            not torch.cuda.is_available():
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the environment
        accelerator.state.distributed_type = DistributedType.FSDP
    return accelerator


def _ids(model) -> set[int]:
    return {id(p) for p in model.parameters()}


def main(model_dir: str, mode: str) -> None:
    from unlearnlm.data.batches import collate
    from unlearnlm.lm.loading import load_model
    from unlearnlm.settings import UnlearnConfig
    from unlearnlm.train.models import prepare_training, shards_parameters
    from unlearnlm.train.unlearn import unlearning_step

    accelerator = _accelerator()
    kind = str(accelerator.distributed_type).split(".")[-1]
    sharded = shards_parameters(accelerator)
    model, _, _ = load_model(model_dir)
    settings = UnlearnConfig(lora_rank=4 if mode == "lora" else None)
    prepared = prepare_training(
        model, accelerator, settings, reference=True,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2), micro_batch=2)
    ids = torch.randint(3, 250, (2, 10), generator=torch.Generator().manual_seed(0)).tolist()
    batch = collate(ids, [1, 1], 2, accelerator.device)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    before = prepared.reference(**inputs).logits.detach().clone()
    optimised = {id(p) for group in prepared.optimizer.param_groups for p in group["params"]}
    reference = prepared.reference
    reference_params = _ids(reference) if isinstance(reference, torch.nn.Module) else set()
    terms = unlearning_step({"forget_ga": 1.0, "analogous_kl": 1.0}, prepared.model, reference,
                            prepared.optimizer, accelerator,
                            {"forget": batch, "analogous": batch})
    after = prepared.reference(**inputs).logits
    policy_params = list(prepared.unwrapped.parameters())
    print(json.dumps({
        "distributed_type": kind,
        "wrapper": type(prepared.model).__name__,
        "shards_parameters": sharded,
        "reference_kind": type(reference).__name__,
        "reference_parameters": len(reference_params),
        "reference_in_optimizer": len(reference_params & optimised),
        "reference_in_policy": len(reference_params & _ids(prepared.unwrapped)),
        "reference_whole": all(p.numel() > 0 and type(p) is torch.nn.Parameter
                               for p in (reference.parameters()
                                         if isinstance(reference, torch.nn.Module) else [])),
        "policy_sharded": any(p.numel() == 0 or type(p).__name__ == "DTensor"
                              or hasattr(p, "ds_numel") for p in policy_params),
        "optimised_tensors": len(optimised),
        "reference_unchanged": bool(torch.equal(before, after)),
        "loss": terms["total"],
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
