"""``unlearn()``: the ICU loop, read top to bottom.

1. Load the model (the policy) and, when a term needs it, a frozen copy (the reference).
2. Read the forget set and split it by the model's tokens; pair every forget sample with its
   nearest analogous text (pool + retain); calibrate thresholds on never-seen texts if given.
3. Each epoch: shuffle the active forget samples, take steps on batches of them (with their
   partners, and retain samples when a term reads them), then score every active sample and drop
   the forgotten ones (with their partners). Stop when none is left, when the forget set as a
   whole scores under the EL/MA thresholds, or after ``max_epochs``.
4. Write the model and ``run.json`` into a temporary folder next to ``out``, then rename it.
"""

from __future__ import annotations

import copy
import logging
import random
import time

import torch
from tqdm.auto import tqdm

from unlearnlm.config import UnlearnConfig
from unlearnlm.data import Sample, file_sha256, read_records, split_records
from unlearnlm.errors import UnlearnError
from unlearnlm.losses import METHODS, batches_needed, combined_loss, needs_reference
from unlearnlm.models import load_model, train_last_layers
from unlearnlm.neighbors import pair_analogous
from unlearnlm.rundir import RunDir, environment_versions
from unlearnlm.scoring import (
    Thresholds,
    calibrate,
    generation_scores,
    is_forgotten,
    memorisation_scores,
)

log = logging.getLogger(__name__)


def unlearn(config: UnlearnConfig | None = None, **settings) -> dict:
    """Run an unlearning method; returns the run record (also saved as ``out/run.json``).

    Either pass an :class:`UnlearnConfig` or its fields as keywords, e.g.
    ``unlearn(model="smollm2-135m", forget="f.jsonl", pool="p.jsonl", out="runs/x")``.
    """
    config = config or UnlearnConfig(**settings)
    config.require_paths()
    run_dir = RunDir.create(config.out, config.model, config.overwrite)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    from accelerate import Accelerator
    from accelerate.utils import set_seed

    set_seed(config.seed)
    accelerator = Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision)
    method = METHODS[config.method]
    weights = {**method.weights, **config.loss_weights}

    records = _read_inputs(config)  # before the slow model load, so bad files fail fast
    model, tokenizer, source = load_model(
        config.model,
        trust_pickle=config.trust_pickle,
        trust_remote_code=config.trust_remote_code,
    )
    run_dir.check_not_input(source.path)
    timings["load_model"] = time.perf_counter() - clock

    clock = time.perf_counter()
    forget = split_records(
        records["forget"], tokenizer, config.prefix_tokens, config.suffix_tokens, role="forget"
    )
    record = _new_record(config, weights, method, source, forget)
    need = batches_needed(weights)
    analogous, pairs = ([], [])
    if "analogous" in need:
        analogous, pairs = _pair(config, records, tokenizer, forget)
    retain = _retain_samples(config, records, tokenizer, forget) if "retain" in need else []
    record["pairs"] = pairs
    timings["data_and_pairing"] = time.perf_counter() - clock

    reference = None
    if needs_reference(weights):
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    record["model"]["trainable_parameters"] = train_last_layers(model, config.trainable_layers)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr,
        betas=tuple(config.adam_betas),
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    if reference is not None:
        reference = reference.to(accelerator.device)

    clock = time.perf_counter()
    thresholds = _thresholds(config, records, accelerator, model, tokenizer)
    record["thresholds"] = thresholds.as_dict()
    timings["calibration"] = time.perf_counter() - clock

    active = [True] * len(forget)
    clock = time.perf_counter()
    with accelerator.autocast():
        record["epochs"].append(
            _score_epoch(0, model, tokenizer, forget, active, thresholds, config, {}, drop=False)
        )
    timings["scoring"] = time.perf_counter() - clock
    timings["training"] = 0.0

    for epoch in range(1, config.max_epochs + 1):
        clock = time.perf_counter()
        losses = _train_epoch(
            epoch, accelerator, model, reference, optimizer, weights,
            forget, analogous, retain, active, config, tokenizer.pad_token_id,
        )
        timings["training"] += time.perf_counter() - clock
        clock = time.perf_counter()
        with accelerator.autocast():
            entry = _score_epoch(
                epoch, model, tokenizer, forget, active, thresholds, config, losses,
                drop=method.iterative_refinement,
            )
        timings["scoring"] += time.perf_counter() - clock
        record["epochs"].append(entry)
        record["dropped_order"].extend(entry["dropped"])
        _log_epoch(entry, len(forget))
        reason = _stop_reason(entry, thresholds, active)
        if reason:
            record["stopped"] = {"epoch": epoch, "reason": reason}
            break
    else:
        record["stopped"] = {"epoch": config.max_epochs, "reason": "max_epochs reached"}

    record["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    run_dir.finish(accelerator.unwrap_model(model), tokenizer, record)
    return record


def _new_record(config, weights, method, source, forget: list[Sample]) -> dict:
    return {
        "config": config.to_dict(),
        "versions": environment_versions(),
        "method": {
            "name": config.method,
            "loss_weights": weights,
            "iterative_refinement": method.iterative_refinement,
        },
        "model": {"spec": source.spec, "kind": source.kind, "path": source.path},
        "forget_set": {
            "path": str(config.forget),
            "sha256": file_sha256(config.forget),
            "samples": len(forget),
            "ids": [s.id for s in forget],
        },
        "epochs": [],
        "dropped_order": [],
    }


def _read_inputs(config) -> dict[str, list]:
    """Read every input file once; each reader raises a one-line UnlearnError on bad input."""
    paths = {"forget": config.forget, "pool": config.pool, "retain": config.retain,
             "calibration": config.calibrate_on}
    return {role: read_records(path, role=role) if path else [] for role, path in paths.items()}


def _pair(config, records, tokenizer, forget: list[Sample]) -> tuple[list[list[int]], list[dict]]:
    """Each forget sample's nearest analogous text (pool + retain), as token ids."""
    candidates = [(role, r) for role in ("pool", "retain") for r in records[role]]
    if not candidates:
        raise UnlearnError(
            f"method '{config.method}' needs analogous texts: give --pool (texts of the same kind "
            "with other facts) and/or --retain"
        )
    pairs = pair_analogous(
        [s.text for s in forget],
        [r.text for _, r in candidates],
        embed=_embedder(config.embedder_model),
    )
    cap = max(len(s.input_ids) for s in forget)
    texts = [candidates[p.candidate_index][1].text for p in pairs]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    analogous = [list(i)[:cap] for i in ids]
    info = [
        {
            "forget_id": forget[p.forget_index].id,
            "analogous_id": candidates[p.candidate_index][1].id,
            "source": candidates[p.candidate_index][0],
            "similarity": round(float(p.similarity), 4),
        }
        for p in pairs
    ]
    return analogous, info


def _embedder(model_dir: str | None):
    from unlearnlm.neighbors import embed_texts

    return lambda texts: embed_texts(texts, model_dir=model_dir)


def _retain_samples(config, records, tokenizer, forget: list[Sample]) -> list[list[int]]:
    chosen = records["retain"] or records["pool"]
    if not chosen:
        raise UnlearnError(
            f"method '{config.method}' needs retain texts: give --retain (or --pool)"
        )
    cap = max(len(s.input_ids) for s in forget)
    texts = [r.text for r in chosen]
    return [list(i)[:cap] for i in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _thresholds(config, records, accelerator, model, tokenizer) -> Thresholds:
    if not config.calibrate_on:
        return Thresholds(
            config.bleu_threshold, config.bertscore_threshold,
            config.el_threshold, config.ma_threshold, "settings",
        )
    samples = split_records(
        records["calibration"], tokenizer, config.prefix_tokens, config.suffix_tokens,
        role="calibration",
    )
    log.info("Calibrating thresholds on %d never-seen texts", len(samples))
    with accelerator.autocast():
        return calibrate(model, tokenizer, samples, config, str(config.calibrate_on))


def collate(
    sequences: list[list[int]], starts: list[int], pad_token_id: int, device
) -> dict[str, torch.Tensor]:
    """Right-padded batch; ``loss_mask`` marks targets at positions >= start (and >= 1)."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    loss_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (seq, start) in enumerate(zip(sequences, starts)):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention_mask[row, : len(seq)] = 1
        loss_mask[row, max(start, 1) : len(seq)] = 1
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "loss_mask": loss_mask.to(device),
    }


def _train_epoch(
    epoch, accelerator, model, reference, optimizer, weights,
    forget, analogous, retain, active, config, pad_token_id,
) -> dict[str, float]:
    """One pass over the active forget samples; returns the mean of each loss term."""
    model.train()
    rng = random.Random(config.seed * 1000 + epoch)
    order = [i for i, a in enumerate(active) if a]
    rng.shuffle(order)
    sums: dict[str, float] = {}
    steps = 0
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    for batch in tqdm(batches, desc=f"epoch {epoch}", leave=False, unit="step"):
        parts = _build_batches(batch, forget, analogous, retain, rng, config, pad_token_id,
                               accelerator.device)
        with accelerator.autocast():
            loss, terms = combined_loss(weights, model, reference, parts)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        for name, value in {"total": float(loss.detach()), **terms}.items():
            sums[name] = sums.get(name, 0.0) + value
        steps += 1
    return {name: value / max(steps, 1) for name, value in sums.items()}


def _build_batches(batch, forget, analogous, retain, rng, config, pad, device) -> dict:
    starts = [len(forget[i].prefix_ids) if config.loss_on == "suffix" else 1 for i in batch]
    parts = {"forget": collate([forget[i].input_ids for i in batch], starts, pad, device)}
    if analogous:
        parts["analogous"] = collate([analogous[i] for i in batch], [1] * len(batch), pad, device)
    if retain:
        chosen = [retain[rng.randrange(len(retain))] for _ in batch]
        parts["retain"] = collate(chosen, [1] * len(chosen), pad, device)
    return parts


def _score_epoch(
    epoch, model, tokenizer, forget, active, thresholds, config, losses, drop: bool
) -> dict:
    """Score the active samples, drop the forgotten ones (when ``drop``), and summarise."""
    model.eval()
    indices = [i for i, a in enumerate(active) if a]
    with torch.no_grad():
        gen = generation_scores(model, tokenizer, [forget[i] for i in indices], config)
        mem = memorisation_scores(model, forget, tokenizer.pad_token_id, config.el_n, False)
        mean_ma = sum(mem["ma"]) / len(forget)
        if mean_ma < thresholds.ma:  # EL is costly: only needed once MA is under its threshold
            mem = memorisation_scores(model, forget, tokenizer.pad_token_id, config.el_n, True)
    by_index = dict(zip(indices, gen))
    samples, dropped = [], []
    for i, sample in enumerate(forget):
        entry = {"id": sample.id, "ma": mem["ma"][i], "el": mem["el"][i]}
        if i in by_index:
            scores = by_index[i]
            entry.update(bleu=scores["bleu"], bertscore=scores["bertscore"])
            if config.log_text:
                entry["generation"] = scores["generation"]
            if drop and is_forgotten(scores, thresholds, config.drop_rule):
                active[i] = False
                dropped.append(sample.id)
        entry["active"] = active[i]
        samples.append(entry)
    return {
        "epoch": epoch,
        "losses": losses,
        "active": sum(active),
        "dropped": dropped,
        "mean": _means(samples),
        "samples": samples,
    }


def _means(samples: list[dict]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("ma", "el", "bleu", "bertscore"):
        values = [s[key] for s in samples if s.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


def _stop_reason(entry: dict, thresholds: Thresholds, active: list[bool]) -> str | None:
    if not any(active):
        return "every sample forgotten (none left active)"
    mean = entry["mean"]
    if mean["el"] is not None and mean["el"] < thresholds.el and mean["ma"] < thresholds.ma:
        return (
            f"forget set under the EL/MA thresholds (EL {mean['el']:.4f} < {thresholds.el:.4f}, "
            f"MA {mean['ma']:.4f} < {thresholds.ma:.4f})"
        )
    return None


def _log_epoch(entry: dict, total: int) -> None:
    mean = entry["mean"]
    parts = [f"epoch {entry['epoch']}: {entry['active']}/{total} active"]
    if entry["dropped"]:
        parts.append(f"dropped {len(entry['dropped'])}")
    parts.append(f"MA {mean['ma']:.3f}")
    if mean["el"] is not None:
        parts.append(f"EL {mean['el']:.3f}")
    if mean["bleu"] is not None:
        parts.append(f"BLEU {mean['bleu']:.3f} BERTScore {mean['bertscore']:.3f}")
    if entry["losses"]:
        parts.append(f"loss {entry['losses'].get('total', 0.0):.3f}")
    log.info(", ".join(parts))
