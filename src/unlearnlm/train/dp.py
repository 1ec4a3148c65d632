"""DP-SGD fine-tuning (Abadi et al. 2016, "Deep Learning with Differential Privacy") via Opacus.

One DP-SGD step: draw a batch by Poisson sampling (each record joins with probability
q = 1 / steps per epoch, so ``batch_size`` records on average), compute each record's own
gradient, clip it to L2 norm C (``dp_max_grad_norm``), sum, add Gaussian noise of standard
deviation sigma * C and divide by the expected batch size. The noise multiplier sigma is the
smallest that keeps the planned steps (``max_epochs`` epochs) within ``dp_epsilon`` at
``dp_delta`` under the RDP accountant (Mironov 2017; Opacus' ``get_noise_multiplier``); the
accountant then counts the steps actually taken, so a run that stops early spends less.

Per-record gradients come from Opacus' hooks on the model's modules (``wrap_model=False``: the
model stays a plain Hugging Face model). Linear layers (peft's LoRA A and B included) and
embeddings have exact per-sample rules; other modules with trainable weights (Llama's RMSNorm)
go through Opacus' functorch fallback. Only trainable parameters get per-record gradients, so
LoRA and ``trainable_layers`` runs pay for the adapters or the last blocks only.

The loss of a record is its own mean token NLL and the batch loss their mean, so a record's
gradient does not depend on which other records share its batch (a token mean over the batch
would make it so, and the clipping bound would no longer bound one record's influence).

The random numbers (batches and noise) come from torch's seeded generators, not from a
cryptographically secure source (Opacus' ``secure_mode``): fine for measuring what DP costs and
buys, not for a production guarantee.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from unlearnlm.data.batches import collate
from unlearnlm.errors import UnlearnError
from unlearnlm.methods.losses import sample_nll

log = logging.getLogger(__name__)
ACCOUNTANT = "rdp"
# Opacus' and torch's notices about things this module does on purpose
_QUIET = ("Secure RNG turned off", "Optimal order is the", "Full backward hook is firing",
          "Using a non-full backward hook")


@dataclass
class PrivateTraining:
    """A model under DP-SGD: the optimiser that clips and adds noise, the Poisson batches of
    record indices, and the accountant."""

    engine: Any  # opacus.PrivacyEngine: its accountant counts the steps taken
    optimizer: Any  # opacus.optimizers.DPOptimizer around the plain optimiser
    batches: Any  # opacus.data_loader.DPDataLoader over record indices
    hooks: Any  # opacus GradSampleHooks; cleanup() removes them and the per-record gradients
    noise_multiplier: float
    sample_rate: float
    delta: float
    target_epsilon: float
    max_grad_norm: float
    steps: int = 0

    def epsilon_spent(self) -> float:
        """The epsilon of the steps taken so far, at ``delta`` (0 before the first step)."""
        if self.steps == 0:
            return 0.0
        with _quiet():
            return float(self.engine.accountant.get_epsilon(self.delta))

    def summary(self) -> dict[str, Any]:
        return {"target_epsilon": self.target_epsilon, "delta": self.delta,
                "max_grad_norm": self.max_grad_norm, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "steps": self.steps,
                "epsilon_spent": self.epsilon_spent(), "accountant": ACCOUNTANT,
                "poisson_sampling": True}


def make_private(model: torch.nn.Module, optimizer: torch.optim.Optimizer, records: int, *,
                 batch_size: int, epochs: int, epsilon: float, delta: float,
                 max_grad_norm: float, seed: int) -> PrivateTraining:
    """Put ``model`` (its trainable parameters are those of ``optimizer``) under DP-SGD for
    ``epochs`` passes over ``records`` records, spending at most ``epsilon`` at ``delta``."""
    from torch.utils.data import DataLoader, TensorDataset

    try:
        from opacus import PrivacyEngine
    except ImportError as exc:
        raise UnlearnError("--dp-epsilon needs Opacus: pip install -e '.[dp]'") from exc

    indices = DataLoader(TensorDataset(torch.arange(records)), batch_size=batch_size)
    model.train()  # Opacus checks the mode it hooks into
    try:
        with _quiet():
            engine = PrivacyEngine(accountant=ACCOUNTANT)
            hooks, dp_optimizer, batches = engine.make_private_with_epsilon(
                module=model, optimizer=optimizer, data_loader=indices, target_epsilon=epsilon,
                target_delta=delta, epochs=epochs, max_grad_norm=max_grad_norm,
                poisson_sampling=True, loss_reduction="mean", wrap_model=False,
                noise_generator=torch.Generator().manual_seed(seed))
    except ValueError as exc:
        if "budget is too low" in str(exc):
            raise UnlearnError(f"--dp-epsilon {epsilon:g} is out of reach for {records} records "
                               f"in {epochs} epochs (no noise level gets there); raise it") from exc
        raise
    sample_rate = float(batches.sample_rate)
    training = PrivateTraining(engine, dp_optimizer, batches, hooks,
                               float(dp_optimizer.noise_multiplier), sample_rate, delta, epsilon,
                               max_grad_norm)
    log.info("DP-SGD: noise multiplier %.3f, sample rate %.3f (%.1f records a step on average), "
             "clipping at %g, target epsilon %g at delta %g", training.noise_multiplier,
             sample_rate, sample_rate * records, max_grad_norm, epsilon, delta)
    return training


def private_epoch(model, training: PrivateTraining, sequences: list[list[int]], pad: int,
                  device, autocast, progress: bool = False, epoch: int = 0) -> float:
    """One pass of Poisson batches over ``sequences`` (token ids; the loss covers every token
    after the first): per-record gradients, clipped, noised, one step per batch. Returns the
    mean loss of the non-empty batches. ``autocast``: a context manager factory."""
    from tqdm.auto import tqdm

    model.train()
    total, counted = 0.0, 0
    for (index,) in tqdm(training.batches, desc=f"DP fine-tune epoch {epoch}", leave=False,
                         disable=not progress):
        training.optimizer.zero_grad(set_to_none=True)
        if len(index) == 0:
            _empty_batch(training.optimizer)  # noise alone: the accounting assumes the step
        else:
            loss = record_loss(model, [sequences[i] for i in index.tolist()], pad, device,
                               autocast)
            with _quiet():
                loss.backward()
            total, counted = total + float(loss.detach()), counted + 1
        training.optimizer.step()
        training.steps += 1
    return total / max(counted, 1)


def record_loss(model, sequences: list[list[int]], pad: int, device, autocast) -> torch.Tensor:
    """The mean over the batch of each record's own mean token NLL (see the module docstring)."""
    parts = collate(sequences, [1] * len(sequences), pad, device)
    with autocast():
        logits = model(input_ids=parts["input_ids"],
                       attention_mask=parts["attention_mask"]).logits
        return sample_nll(logits, parts["input_ids"], parts["loss_mask"]).mean()


def _empty_batch(optimizer) -> None:
    """A Poisson batch with no record: per-record gradients of batch size 0, so that the step
    adds the noise alone, as DP-SGD does."""
    for p in optimizer.params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for text in _QUIET:
            warnings.filterwarnings("ignore", message=f".*{text}")
        yield
