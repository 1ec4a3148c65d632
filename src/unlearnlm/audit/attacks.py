"""The attacks on the weights: a few fine-tuning steps, and 8-bit or 4-bit quantisation.

Each returns a changed copy of the model and leaves the model it was given as it was.

- ``relearned``: plain NLL fine-tuning (AdamW, every parameter) for a few steps. Knowledge that
  unlearning only hid comes back after a few steps on loosely related text (Hu et al. 2024,
  arXiv 2406.13356), on a part of the forgotten data (Deeb and Roger 2024, arXiv 2410.08827) or
  even on unrelated text (Lucki et al., TMLR 2025).
- ``quantised``: round-to-nearest integer weights through torchao's ``IntxWeightOnlyConfig``
  (it runs on a CPU): 8 bits with one scale per output row (symmetric), or 4 bits with a scale
  and a zero point per group of inputs (asymmetric, as 4-bit GPTQ/AWQ checkpoints store them).
  Zhang et al. (ICLR 2025) found that 4-bit quantisation brings back most of what unlearning
  with a utility constraint removed: its updates are small against a 4-bit bin. The output
  head stays in full precision, as in those checkpoints. The quantised weights are written back
  as ordinary float tensors holding exactly the values the quantised layer computes with
  (``dequantize()``), so every metric and every decoder runs on the result unchanged.
"""

from __future__ import annotations

import copy
import logging
import random

import torch

from unlearnlm.data.batches import collate
from unlearnlm.errors import UnlearnError
from unlearnlm.methods.losses import nll

log = logging.getLogger(__name__)


def relearned(
    model, sequences: list[list[int]], *, steps: int, lr: float, batch_size: int, seed: int,
    pad_token_id: int,
) -> tuple[torch.nn.Module, list[float]]:
    """A copy of ``model`` after ``steps`` AdamW steps of NLL on batches of ``sequences`` (every
    token a target), cycling through them in seeded random order; returns it (in eval mode,
    no gradients) and the loss of each step."""
    usable = [s for s in sequences if len(s) >= 2]
    if not usable:
        raise UnlearnError("relearning needs texts of 2 or more tokens; give longer texts")
    attacked = copy.deepcopy(model)
    attacked.train()
    attacked.requires_grad_(True)
    optimizer = torch.optim.AdamW(attacked.parameters(), lr=lr, weight_decay=0.0)
    device = next(attacked.parameters()).device
    rng = random.Random(seed)
    order: list[int] = []
    losses = []
    for _ in range(steps):
        if len(order) < min(batch_size, len(usable)):
            order += rng.sample(range(len(usable)), len(usable))
        rows, order = order[:batch_size], order[batch_size:]
        parts = collate([usable[i] for i in rows], [1] * len(rows), pad_token_id, device)
        logits = attacked(input_ids=parts["input_ids"],
                          attention_mask=parts["attention_mask"]).logits  # (B, T, V)
        loss = nll(logits, parts["input_ids"], parts["loss_mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    attacked.eval()
    attacked.requires_grad_(False)
    return attacked, losses


def _torchao():
    """torchao's quantisation API, imported quietly (it logs about kernels for other devices)."""
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from torchao import quantization
    except ImportError as err:
        raise UnlearnError(f"quantisation needs torchao ({err}); install it: pip install "
                           "torchao") from None
    return quantization


def group_width(in_features: int, group_size: int) -> int:
    """The 4-bit group of a layer: ``group_size`` inputs, or, when that does not divide the
    layer's input width, the largest divisor of the width below it (SmolLM2's width 576 and
    groups of 128: 96)."""
    return max(d for d in range(1, min(group_size, in_features) + 1) if in_features % d == 0)


def quantised(model, bits: int, group_size: int = 128) -> torch.nn.Module:
    """A copy of ``model`` whose linear layers, all but the output head, compute with
    round-to-nearest ``bits``-bit weights (see the module docstring); 4-bit groups follow
    ``group_width``."""
    if bits not in (4, 8):
        raise UnlearnError(f"bits is {bits}; the audit quantises to 8 or 4 bits")
    q = _torchao()
    attacked = copy.deepcopy(model).eval()
    head = attacked.get_output_embeddings()
    linear = {name: module for name, module in attacked.named_modules()
              if isinstance(module, torch.nn.Linear) and module is not head}
    if bits == 8:
        configs = {q.PerAxis(0): list(linear)}
    else:
        configs: dict = {}
        for name, module in linear.items():
            configs.setdefault(q.PerGroup(group_width(module.in_features, group_size)),
                               []).append(name)
    mapping = q.MappingType.SYMMETRIC if bits == 8 else q.MappingType.ASYMMETRIC
    dtypes = {name: module.weight.dtype for name, module in linear.items()}
    for granularity, names in configs.items():
        chosen = set(names)
        config = q.IntxWeightOnlyConfig(weight_dtype=torch.int8 if bits == 8 else torch.int4,
                                        granularity=granularity, mapping_type=mapping)
        q.quantize_(attacked, config, filter_fn=lambda _, fqn, chosen=chosen: fqn in chosen)
    for name in linear:
        module = attacked.get_submodule(name)
        values = module.weight.dequantize().to(dtypes[name])
        module.weight = torch.nn.Parameter(values, requires_grad=False)
    return attacked.requires_grad_(False)
