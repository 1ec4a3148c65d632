"""A LoRA-adapted model (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models").

``add_lora(model, rank, alpha)`` wraps the model's projections (peft's defaults for the
architecture, or ``target_modules``) in low-rank adapters, W + (alpha / rank) B A, with B
initialised to zero, so the adapted model starts out computing exactly what the base model does.
Only A and B train; every base weight is frozen. ``with_lora`` does the same to an ``LM`` and
returns a plain ``LM``: metrics, evaluation and generation treat it like any other model.

``AdapterOff(model)`` is the frozen original without a second copy in memory: it runs the same
module with its adapters switched off (and in eval mode), under ``no_grad``. The unlearning loop
uses it as the reference model of the KL, NPO, DPO, UNDIAL and RMU terms.

Several adapters on one frozen base (a SISA ensemble, ``train.sisa``): ``adapter_ensemble`` loads
each adapter folder into one peft model under its own name and returns the ``EnsembleLM`` of
``AdapterLM`` members, each computing with its own adapter switched on. The base weights sit in
memory once, however many adapters there are.

Saving (``lm.loading.save_model``) writes the adapters merged into the weights, or with
``merge=False`` the adapter alone (``adapter_config.json`` + ``adapter_model.safetensors``), which
``lm.loading.load_model`` reads back on top of the base model it names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from unlearnlm.errors import UnlearnError
from unlearnlm.lm.composite import EnsembleLM
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


class AdapterLM(LM):
    """One of the named adapters of a peft model that holds several: every forward pass (scores
    and generation) runs with ``adapter`` switched on."""

    def __init__(self, model, tokenizer, adapter: str) -> None:
        if not is_adapted(model) or adapter not in getattr(model, "peft_config", {}):
            raise UnlearnError(f"the model has no adapter named '{adapter}'")
        super().__init__(model, tokenizer)
        self.adapter = adapter

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.model.set_adapter(self.adapter)
        return super().logits(input_ids, attention_mask)

    def forward_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     past: Any = None) -> tuple[torch.Tensor, Any]:
        self.model.set_adapter(self.adapter)
        return super().forward_step(input_ids, attention_mask, past)

    def generate(self, prefixes: list[list[int]], max_new_tokens: int,
                 **options: Any) -> list[list[int]]:
        self.model.set_adapter(self.adapter)
        return super().generate(prefixes, max_new_tokens, **options)

    def greedy_to_the_end(self, sequences: list[list[int]], predictions: list[list[int]],
                          jobs: list[tuple[int, int]], batch_size: int,
                          ) -> dict[tuple[int, int], list[int]]:
        self.model.set_adapter(self.adapter)
        return super().greedy_to_the_end(sequences, predictions, jobs, batch_size)


def adapter_ensemble(model, tokenizer, adapters: Mapping[str, str | Path]) -> EnsembleLM:
    """The mean of the next-token distributions of ``model`` under each adapter (name -> an
    adapter folder as ``save_pretrained`` writes it), all on the one ``model``, which becomes the
    peft model holding them."""
    from peft import PeftModel

    if not adapters:
        raise UnlearnError("an adapter ensemble needs at least one adapter folder")
    names = list(adapters)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapters[names[0]]),
                                               adapter_name=names[0])
        for name in names[1:]:
            peft_model.load_adapter(str(adapters[name]), adapter_name=name)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnlearnError(f"cannot load the adapters into {type(model).__name__}: {first}") \
            from exc
    peft_model.eval()
    return EnsembleLM([AdapterLM(peft_model, tokenizer, name) for name in names])
