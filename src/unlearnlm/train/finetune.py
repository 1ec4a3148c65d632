"""``finetune()``: train a model on texts until it has memorised them.

Used to build the "leaky" model of the honest protocol (fine-tune on forget + retain data until
the forget set is memorised) and the "retain" model (retain data only). Training is plain NLL on
every token; after each epoch the mean suffix token accuracy (teacher-forced argmax == true token
over the suffix) is measured, and training stops once it reaches ``target_accuracy``.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from unlearnlm.data.batches import collate
from unlearnlm.data.texts import Sample, file_sha256, read_records, split_records
from unlearnlm.lm.loading import load_model, save_model, train_last_layers
from unlearnlm.methods.losses import nll
from unlearnlm.rundir import RunDir, environment_versions
from unlearnlm.settings import FinetuneSettings

log = logging.getLogger(__name__)


def suffix_accuracy(
    model, samples: list[Sample], pad_token_id: int, batch_size: int = 16
) -> list[float]:
    """Per sample: share of suffix tokens the model predicts exactly (teacher forcing)."""

    device = next(model.parameters()).device
    out: list[float] = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            batch = collate([s.input_ids for s in chunk], [len(s.prefix_ids) for s in chunk],
                            pad_token_id, device)
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
            hits = (logits[:, :-1].argmax(-1) == batch["input_ids"][:, 1:]).float()  # (B, T-1)
            mask = batch["loss_mask"][:, 1:].float()
            out += ((hits * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()
    return out


def finetune(
    model: str | FinetuneSettings, data: str | None = None, out: str | None = None, *,
    progress: bool = True, **settings: Any,
) -> dict:
    """Fine-tune a model on texts; writes the model and ``finetune.json`` to the output folder.

    Either pass a :class:`~unlearnlm.settings.FinetuneSettings` or the model, the data, the
    output folder and any other of its fields as keywords, e.g.
    ``finetune("smollm2-135m", "records.jsonl", "runs/leaky", lr=1e-3)``.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    s = model if isinstance(model, FinetuneSettings) else FinetuneSettings(
        model=model, data=data or "", out=out or "", **settings)
    s.require()
    run_dir = RunDir.create(s.out, s.model, s.overwrite)
    set_seed(s.seed)
    accelerator = Accelerator(mixed_precision=s.mixed_precision)
    policy, tokenizer, source = load_model(s.model)
    run_dir.check_not_input(source.path)
    samples = split_records(read_records(s.data, role="training"), tokenizer,
                            s.prefix_tokens, s.suffix_tokens, role="training")
    train_last_layers(policy, s.trainable_layers)
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=s.lr, weight_decay=0.0
    )
    policy, optimizer = accelerator.prepare(policy, optimizer)
    record = _new_record(s)
    start = time.perf_counter()
    rng = random.Random(s.seed)
    pad = tokenizer.pad_token_id
    for epoch in range(1, s.max_epochs + 1):
        loss = _epoch(policy, optimizer, accelerator, samples, s.batch_size, rng, pad, progress,
                      epoch)
        with accelerator.autocast():
            acc = suffix_accuracy(policy, samples, pad)
        mean_acc = sum(acc) / len(acc)
        record["epochs"].append({"epoch": epoch, "loss": loss, "suffix_accuracy": mean_acc})
        log.info("fine-tune epoch %d: loss %.3f, suffix token accuracy %.3f", epoch, loss,
                 mean_acc)
        if s.target_accuracy is not None and mean_acc >= s.target_accuracy:
            break
    record["suffix_accuracy"] = record["epochs"][-1]["suffix_accuracy"]
    reached = record["suffix_accuracy"]
    record["memorised"] = s.target_accuracy is not None and reached >= s.target_accuracy
    record["seconds"] = round(time.perf_counter() - start, 1)
    save_model(accelerator.unwrap_model(policy), tokenizer, run_dir.out, {"finetune.json": record})
    return record


def _new_record(s: FinetuneSettings) -> dict:
    recorded = ("max_epochs", "lr", "batch_size", "target_accuracy", "prefix_tokens",
                "suffix_tokens", "mixed_precision", "seed", "trainable_layers")
    return {
        "model": s.model, "data": s.data, "data_sha256": file_sha256(s.data),
        "settings": {name: getattr(s, name) for name in recorded},
        "versions": environment_versions(), "epochs": [],
    }


def _epoch(model, optimizer, accelerator, samples, batch_size, rng, pad, progress, epoch) -> float:

    model.train()
    order = list(range(len(samples)))
    rng.shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    total = 0.0
    for batch in tqdm(batches, desc=f"fine-tune epoch {epoch}", leave=False, disable=not progress):
        parts = collate([samples[i].input_ids for i in batch], [1] * len(batch), pad,
                        accelerator.device)
        with accelerator.autocast():
            logits = model(input_ids=parts["input_ids"],
                           attention_mask=parts["attention_mask"]).logits
            loss = nll(logits, parts["input_ids"], parts["loss_mask"])
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        total += float(loss.detach())
    return total / max(len(batches), 1)
