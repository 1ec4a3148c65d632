"""``finetune()``: train a model on texts until it has memorised them.

Memorising a few texts at a high learning rate also teaches the model that every text looks like
them: its general continuations drift into the memorised format. With ``general`` (a file of
ordinary text, e.g. Wikipedia paragraphs) each step also sees ``general_per_step`` such texts and
keeps the model's distribution on them close to the base model's (KL, the default) or trains on
them (NLL), so the model stays fluent while it memorises.

Used to build the "leaky" model of the honest protocol (fine-tune on forget + retain data until
the forget set is memorised) and the "retain" model (retain data only). ``cached_finetune`` is
the one way the bench, the demo and the benchmark scripts get such a model: it fine-tunes once
and keeps the result in the cache folder, keyed by a hash of everything that shapes it.

Training is plain NLL on every token (``loss_on="suffix"``: on the suffix tokens only, the
answer of a question-answer record). After each epoch the mean suffix token accuracy is
measured (the suffix MA, ``metrics.scores.suffix_memorization_accuracy``: teacher-forced argmax
== true token over the suffix), and training stops once it reaches ``target_accuracy``.

With ``dp_epsilon`` the steps are DP-SGD instead (``train.dp``): Poisson-sampled batches, each
record's gradient clipped and Gaussian noise added, at the noise level that spends ``dp_epsilon``
over ``max_epochs``; ``finetune.json`` records the epsilon actually spent (also per epoch) and
the noise multiplier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from unlearnlm.data.batches import collate
from unlearnlm.data.texts import file_sha256, read_records, split_records
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.loading import load_model, resolve_model, save_model, weights_sha256
from unlearnlm.methods.losses import kl_to_reference, nll
from unlearnlm.metrics.scores import suffix_memorization_accuracy
from unlearnlm.paths import cache_root
from unlearnlm.rundir import RunDir, environment_versions
from unlearnlm.settings import FinetuneSettings
from unlearnlm.train.dp import PrivateTraining, make_private, private_epoch
from unlearnlm.train.models import DTYPES, full_state_dict, make_accelerator, prepare_training

log = logging.getLogger(__name__)


def finetune(
    model: str | FinetuneSettings, data: str | None = None, out: str | None = None, *,
    progress: bool = True, **settings: Any,
) -> dict:
    """Fine-tune a model on texts; writes the model and ``finetune.json`` to the output folder.

    Either pass a :class:`~unlearnlm.settings.FinetuneSettings` or the model, the data, the
    output folder and any other of its fields as keywords, e.g.
    ``finetune("smollm2-135m", "records.jsonl", "runs/leaky", lr=1e-3)``.
    """
    from accelerate.utils import set_seed

    s = model if isinstance(model, FinetuneSettings) else FinetuneSettings(
        model=model, data=data or "", out=out or "", **settings)
    s.require()
    run_dir = RunDir.create(s.out, s.model, s.overwrite)
    set_seed(s.seed)
    accelerator = make_accelerator(s.mixed_precision)
    policy, tokenizer, source = load_model(s.model, dtype=DTYPES[s.dtype])
    run_dir.check_not_input(source.path)
    samples = split_records(read_records(s.data, role="training"), tokenizer,
                            s.prefix_tokens, s.suffix_tokens, role="training")
    mixed = _general_batches(s.general, tokenizer, s.general_per_step, s.general_tokens, s.seed)
    prepared = prepare_training(
        policy, accelerator, s, reference=bool(mixed) and s.general_loss == "kl",
        optimizer=lambda params: torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0),
        micro_batch=s.batch_size,
    )
    policy, optimizer, reference = prepared.model, prepared.optimizer, prepared.reference
    private = _private(prepared, len(samples), s)
    record = _new_record(s)
    start = time.perf_counter()
    rng = random.Random(s.seed)
    pad = tokenizer.pad_token_id
    for epoch in range(1, s.max_epochs + 1):
        if private is None:
            loss = _epoch(policy, optimizer, accelerator, samples, s.batch_size, rng, pad,
                          progress, epoch, _General(mixed, reference, s.general_weight),
                          suffix_only=s.loss_on == "suffix")
        else:
            loss = private_epoch(policy, private, [x.input_ids for x in samples], pad,
                                 accelerator.device, accelerator.autocast, progress, epoch)
        with accelerator.autocast():
            acc = suffix_memorization_accuracy(prepared.unwrapped, samples)
        mean_acc = sum(acc) / len(acc)
        record["epochs"].append({"epoch": epoch, "loss": loss, "suffix_accuracy": mean_acc,
                                 **({"epsilon_spent": private.epsilon_spent()} if private else {})})
        log.info("fine-tune epoch %d: loss %.3f, suffix token accuracy %.3f", epoch, loss,
                 mean_acc)
        if s.target_accuracy is not None and mean_acc >= s.target_accuracy:
            break
    record["suffix_accuracy"] = record["epochs"][-1]["suffix_accuracy"]
    reached = record["suffix_accuracy"]
    record["memorised"] = s.target_accuracy is not None and reached >= s.target_accuracy
    record["seconds"] = round(time.perf_counter() - start, 1)
    if private is not None:
        record["dp"] = private.summary()
        private.hooks.cleanup()  # the saved model carries no hooks or per-record gradients
        log.info("DP-SGD spent epsilon %.3f at delta %g in %d steps (target %g, noise "
                 "multiplier %.3f)", record["dp"]["epsilon_spent"], s.dp_delta,
                 private.steps, s.dp_epsilon, private.noise_multiplier)
    gathered = full_state_dict(prepared.model, accelerator)  # every process takes part
    if accelerator.is_main_process:  # under several processes, one writes
        save_model(prepared.unwrapped, tokenizer, run_dir.out, {"finetune.json": record},
                   merge=s.merge, state_dict=gathered)
    accelerator.wait_for_everyone()
    return record


def _private(prepared, records: int, s: FinetuneSettings) -> PrivateTraining | None:
    """DP-SGD around the prepared model and optimiser when ``dp_epsilon`` asks for it."""
    if s.dp_epsilon is None:
        return None
    if prepared.accelerator.num_processes > 1:
        raise UnlearnError("--dp-epsilon runs in one process: the privacy accounting here "
                           "assumes one process's Poisson batches; start it without "
                           "accelerate launch (or with --num_processes 1)")
    plain = getattr(prepared.optimizer, "optimizer", prepared.optimizer)  # accelerate's wrapper
    return make_private(prepared.model, plain, records, batch_size=s.batch_size,
                        epochs=s.max_epochs, epsilon=s.dp_epsilon, delta=s.dp_delta,
                        max_grad_norm=s.dp_max_grad_norm, seed=s.seed)


def _new_record(s: FinetuneSettings) -> dict:
    recorded = ("max_epochs", "lr", "batch_size", "target_accuracy", "prefix_tokens",
                "suffix_tokens", "mixed_precision", "seed", "trainable_layers", "general",
                "general_per_step", "general_tokens", "general_loss", "general_weight",
                "lora_rank", "lora_alpha", "lora_target_modules", "merge",
                "gradient_checkpointing", "dtype", "dp_epsilon", "dp_delta", "dp_max_grad_norm",
                "loss_on")
    return {
        "model": s.model, "data": s.data, "data_sha256": file_sha256(s.data),
        "settings": {name: getattr(s, name) for name in recorded},
        "versions": environment_versions(), "epochs": [],
    }


def model_identity(spec: str) -> str:
    """What names a model's weights: the hash of its weight files, or the hub id as given."""
    source = resolve_model(spec)
    return spec if source.kind == "hub" else weights_sha256(source.path)


def cached_finetune(
    model: str, data: str | Path, name: str, *, say: Callable[[str], None] = log.info,
    **settings,
) -> tuple[Path, dict]:
    """``finetune(model, data, ...)`` once, kept in ``<cache>/finetuned/<name>-<key>``; later
    calls with the same model weights, data bytes and ``settings`` (``finetune``'s keyword
    arguments) return that folder and its ``finetune.json`` record without training.

    ``say`` receives one line: that the cached model is reused, or that it is being built.
    """
    key_settings = {k: v for k, v in settings.items() if k != "progress"}
    if key_settings.get("general"):  # the mixed-in text by its bytes, not by where it lies
        key_settings["general"] = file_sha256(key_settings["general"])
    recipe = {"model": model_identity(model), "data_sha256": file_sha256(data),
              "settings": key_settings}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root() / "finetuned" / f"{name}-{key}"
    if (folder / "finetune.json").is_file():
        say(f"Reusing the cached {name} model ({folder}).")
        return folder, json.loads((folder / "finetune.json").read_text(encoding="utf-8"))
    shown = ", ".join(f"{k} {v}" for k, v in key_settings.items())
    say(f"Fine-tuning {model} on {data} into the {name} model ({shown}); cached in {folder}.")
    return folder, finetune(model, str(data), str(folder), overwrite=True, **settings)


class _General:
    """General text mixed into every step: the batches to cycle through, and the frozen base
    model when the term is a KL (None: NLL)."""

    def __init__(self, batches: list[list[list[int]]], reference, weight: float) -> None:
        self.batches, self.reference, self.weight, self.step = batches, reference, weight, 0

    def loss(self, model, pad: int, device) -> torch.Tensor | None:
        if not self.batches:
            return None
        rows = self.batches[self.step % len(self.batches)]
        self.step += 1
        parts = collate(rows, [1] * len(rows), pad, device)
        logits = model(input_ids=parts["input_ids"], attention_mask=parts["attention_mask"]).logits
        if self.reference is None:
            return self.weight * nll(logits, parts["input_ids"], parts["loss_mask"])
        with torch.no_grad():
            ref = self.reference(input_ids=parts["input_ids"],
                                 attention_mask=parts["attention_mask"]).logits
        return self.weight * kl_to_reference(logits, ref, parts["loss_mask"])


def _general_batches(path: str | None, tokenizer, per_step: int, tokens: int,
                     seed: int) -> list[list[list[int]]]:
    """The general texts, shuffled, cut to ``tokens`` tokens, in groups of ``per_step``."""
    if not path:
        return []
    texts = [r.text for r in read_records(path, role="general")]
    random.Random(seed).shuffle(texts)
    ids = [i[:tokens] for i in tokenizer(texts, add_special_tokens=False)["input_ids"]
           if len(i) > 1]
    return [ids[i : i + per_step] for i in range(0, len(ids) - per_step + 1, per_step)]


def _epoch(model, optimizer, accelerator, samples, batch_size, rng, pad, progress, epoch,
           general: _General, suffix_only: bool = False) -> float:

    model.train()
    order = list(range(len(samples)))
    rng.shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    total = 0.0
    for batch in tqdm(batches, desc=f"fine-tune epoch {epoch}", leave=False, disable=not progress):
        starts = [len(samples[i].prefix_ids) if suffix_only else 1 for i in batch]
        parts = collate([samples[i].input_ids for i in batch], starts, pad, accelerator.device)
        with accelerator.autocast():
            logits = model(input_ids=parts["input_ids"],
                           attention_mask=parts["attention_mask"]).logits
            loss = nll(logits, parts["input_ids"], parts["loss_mask"])
            extra = general.loss(model, pad, accelerator.device)
            if extra is not None:
                loss = loss + extra
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        total += float(loss.detach())
    return total / max(len(batches), 1)
