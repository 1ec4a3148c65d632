"""A LoRA-adapted model (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models").

``add_lora(model, rank, alpha)`` wraps the model's projections (peft's defaults for the
architecture, or ``target_modules``) in low-rank adapters, W + (alpha / rank) B A, with B
initialised to zero, so the adapted model starts out computing exactly what the base model does.
Only A and B train; every base weight is frozen. ``with_lora`` does the same to an ``LM`` and
returns a plain ``LM``: metrics, evaluation and generation treat it like any other model.

``AdapterOff(model)`` is the frozen original without a second copy in memory: it runs the same
module with its adapters switched off (and in eval mode), under ``no_grad``. The unlearning loop
uses it as the reference model of the KL, NPO and DPO terms.

Saving (``lm.loading.save_model``) writes the adapters merged into the weights, or with
``merge=False`` the adapter alone (``adapter_config.json`` + ``adapter_model.safetensors``), which
``lm.loading.load_model`` reads back on top of the base model it names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from unlearnlm.errors import UnlearnError
from unlearnlm.lm.interface import LM


def is_adapted(model) -> bool:
    """Whether ``model`` is a peft model (adapters that can be merged or switched off)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


def add_lora(
    model,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
):
    """``model`` with LoRA adapters added in place, as a peft model (see the module docstring)."""
    if rank < 1:
        raise UnlearnError(f"LoRA rank is {rank}; give 1 or more")
    if alpha <= 0:
        raise UnlearnError(f"LoRA alpha is {alpha}; give a number > 0")
    if not 0.0 <= dropout < 1.0:
        raise UnlearnError(f"LoRA dropout is {dropout}; give a fraction in [0, 1)")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                        target_modules=list(target_modules) if target_modules else None)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnlearnError(f"cannot add LoRA adapters to {type(model).__name__}: {first}; "
                           "name the layers with --lora-target-modules") from exc


def with_lora(
    lm: LM,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
) -> LM:
    """``lm``'s model with LoRA adapters added in place (see the module docstring)."""
    model = add_lora(lm.model, rank, alpha, dropout, target_modules)
    return LM(model, lm.tokenizer, pad_token_id=lm.pad_token_id)


class AdapterOff:
    """The base model inside a peft model, called like a model: ``ref(input_ids=...,
    attention_mask=...)`` returns the outputs with every adapter switched off, computed in eval
    mode and without gradients. It holds no weights of its own."""

    def __init__(self, model) -> None:
        if not is_adapted(model):
            raise UnlearnError(f"{type(model).__name__} has no adapters to switch off")
        self.model = model

    def __call__(self, **inputs):
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.model.disable_adapter():
                return self.model(**inputs)
        finally:
            self.model.train(training)

    def parameters(self):
        """None of its own: the reference shares every tensor with the policy."""
        return iter(())
