"""A LoRA-adapted model (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models").

``with_lora(lm, rank, alpha)`` wraps the model's attention projections (peft's defaults for the
architecture, or ``target_modules``) in low-rank adapters, W + (alpha / rank) B A, with B
initialised to zero, so the adapted model starts out computing exactly what the base model does.
Only A and B train. The result is a plain ``LM``: metrics, evaluation and generation treat it
like any other model, and ``LM.save`` writes it with the adapters merged into the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from unlearnlm.errors import UnlearnError
from unlearnlm.lm.interface import LM


def with_lora(
    lm: LM,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
) -> LM:
    """``lm``'s model with LoRA adapters added in place (see the module docstring)."""
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
        model = get_peft_model(lm.model, config)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnlearnError(f"cannot add LoRA adapters to {type(lm.model).__name__}: {first}; "
                           "name the layers with target_modules") from exc
    return LM(model, lm.tokenizer, pad_token_id=lm.pad_token_id)
