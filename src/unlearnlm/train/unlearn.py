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

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from unlearnlm.data.batches import collate
from unlearnlm.data.neighbors import pair_analogous
from unlearnlm.data.texts import (
    Sample,
    distinct_positions,
    file_sha256,
    read_records,
    split_after_opening,
    split_records,
)
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.loading import load_model, save_model, weights_sha256
from unlearnlm.methods.losses import (
    METHODS,
    TermOptions,
    batches_needed,
    combined_loss,
    needs_reference,
    reads_hidden_states,
)
from unlearnlm.metrics.scores import perplexity
from unlearnlm.rundir import RunDir, environment_versions, write_json
from unlearnlm.settings import UnlearnConfig
from unlearnlm.train.checkpoint import (
    load_checkpoint,
    load_trainable_state,
    remove_partial,
    restore,
    save_checkpoint,
    snapshot,
)
from unlearnlm.train.distributed import Split, mean_over_processes, shard_batches
from unlearnlm.train.models import (
    DTYPES,
    full_state_dict,
    make_accelerator,
    per_process,
    prepare_training,
    shards_optimizer,
    shards_parameters,
)
from unlearnlm.train.scoring import (
    Thresholds,
    calibrate,
    calibrate_cuts,
    cut_probe_scores,
    el_scores,
    generation_scores,
    is_forgotten,
    is_forgotten_at_cuts,
    memorisation_scores,
)

log = logging.getLogger(__name__)


def unlearn(config: UnlearnConfig | None = None, *, resume: str | None = None,
            **settings) -> dict:
    """Run an unlearning method; returns the run record (also saved as ``out/run.json``).

    Either pass an :class:`UnlearnConfig` or its fields as keywords, e.g.
    ``unlearn(model="smollm2-135m", forget="f.jsonl", pool="p.jsonl", out="runs/x")``.
    ``resume=OUT`` carries on a killed run from its last finished epoch, with its own settings.
    """
    checkpoint = load_checkpoint(resume) if resume else None
    if checkpoint is not None:
        config = UnlearnConfig(**checkpoint["record"]["config"])
        log.info("Resuming %s after epoch %d", config.out, checkpoint["epoch"])
    config = config or UnlearnConfig(**settings)
    config.require()
    run_dir = RunDir.create(config.out, config.model, config.overwrite or bool(checkpoint))
    run = _setup(config, run_dir)
    if checkpoint is not None:
        run.resume_from(checkpoint)
    else:
        run.start()
    run.train()
    run.record["timings_s"] = {k: round(v, 3) for k, v in run.timings.items()}
    gathered = full_state_dict(run.model, run.accelerator)  # every process takes part
    if run.accelerator.is_main_process:  # the one process that writes
        save_model(run.unwrapped, run.tokenizer, run_dir.out, {"run.json": run.record},
                   merge=config.merge, state_dict=gathered)
        remove_partial(config.out)
    run.accelerator.wait_for_everyone()
    return run.record


def _setup(config: UnlearnConfig, run_dir: RunDir) -> _Run:
    """Load data and model, pair analogous texts, build the optimiser."""
    from accelerate.utils import set_seed

    clock = time.perf_counter()
    set_seed(config.seed)
    method = METHODS[config.method]
    weights = {**method.weights, **config.loss_weights}
    accelerator = make_accelerator(config.mixed_precision, config.cpu,
                                   unused_parameters=reads_hidden_states(weights))
    if not accelerator.is_main_process:  # one process speaks for all
        logging.getLogger("unlearnlm").setLevel(logging.WARNING)
    _check_sharding(config, accelerator)
    records = _read_inputs(config)  # before the slow model load, so bad files fail fast
    model, tokenizer, source = load_model(
        config.model, dtype=DTYPES[config.dtype], trust_pickle=config.trust_pickle,
        trust_remote_code=config.trust_remote_code,
    )
    run_dir.check_not_input(source.path)
    model_hash = weights_sha256(source.path) if source.kind != "hub" else None
    run = _Run(config=config, accelerator=accelerator, method=method, weights=weights,
               tokenizer=tokenizer, records=records,
               options=_term_options(config, weights, model.config))
    run.timings["load_model"] = time.perf_counter() - clock

    clock = time.perf_counter()
    run.forget = _split(config, records["forget"], tokenizer, "forget")
    run.record = _new_record(config, weights, method, source, run.forget)
    run.record["model"]["sha256"] = model_hash
    run.record["method"]["term_options"] = dataclasses.asdict(run.options)
    need = batches_needed(weights)
    if "analogous" in need:
        run.analogous, run.record["pairs"] = _pair(config, records, tokenizer, run.forget)
    if "relabel" in need:
        run.relabel, run.partners, run.record["pairs"] = _relabel_targets(
            config, records, tokenizer, run.forget)
    if "retain" in need:
        run.retain = _retain_samples(config, records, tokenizer, run.forget)
    if "mismatch" in need:
        run.mismatch = _other_suffixes(config, records, tokenizer,
                                       "their suffixes are the mismatched completions")
    if "preference" in need:
        run.preferred = _preferred_answers(config, records, tokenizer)
    run.probe = _probe_texts(config, records, tokenizer)
    run.timings["data_and_pairing"] = time.perf_counter() - clock

    betas = tuple(config.adam_betas)
    prepared = prepare_training(
        model, accelerator, config, reference=needs_reference(weights),
        optimizer=lambda params: torch.optim.Adam(params, lr=config.learning_rate, betas=betas),
        micro_batch=per_process(config.batch_size, accelerator.num_processes),
    )
    run.record["model"]["trainable_parameters"] = prepared.trainable_parameters
    run.record["processes"] = accelerator.num_processes
    run.model, run.optimizer, run.reference = prepared.model, prepared.optimizer, prepared.reference
    run.split = Split(accelerator, whole=shards_parameters(accelerator))
    run.active = [True] * len(run.forget)
    return run


def _term_options(config: UnlearnConfig, weights: dict[str, float], model_config) -> TermOptions:
    """The terms' hyperparameters from the settings, RMU's block resolved on this model."""
    steers = reads_hidden_states(weights)
    return TermOptions(
        simnpo_beta=config.simnpo_beta, simnpo_gamma=config.simnpo_gamma,
        undial_strength=config.undial_strength,
        rmu_layer=_rmu_layer(config, model_config) if steers else 0,
        rmu_coefficient=config.rmu_coefficient, rmu_seed=config.seed)


def _rmu_layer(config: UnlearnConfig, model_config) -> int:
    """The block RMU steers: ``rmu_layer``, else 7/32 of the depth (WMDP steered layer 7 of
    Zephyr-7B's 32), else the first block that trains. A block under the trained ones could not
    move, so asking for one is an error."""
    blocks = getattr(model_config, "num_hidden_layers", None)
    if not isinstance(blocks, int) or blocks < 1:
        raise UnlearnError(f"rmu needs the number of blocks of the model, which its config "
                           f"({type(model_config).__name__}) does not give: use another method")
    first_trained = max(blocks - config.trainable_layers, 0) if config.trainable_layers else 0
    if config.rmu_layer is None:
        return max(7 * blocks // 32, first_trained)
    if config.rmu_layer >= blocks:
        raise UnlearnError(f"rmu_layer {config.rmu_layer} is not a block of this model (it has "
                           f"blocks 0 to {blocks - 1}): give a --rmu-layer in that range")
    if config.rmu_layer < first_trained:
        raise UnlearnError(
            f"rmu_layer {config.rmu_layer} lies under the trained blocks ({first_trained} to "
            f"{blocks - 1} with --trainable-layers {config.trainable_layers}), so nothing that "
            f"trains can move it: give --rmu-layer {first_trained} or more, or train more layers")
    return config.rmu_layer


def _check_sharding(config: UnlearnConfig, accelerator) -> None:
    """What DeepSpeed and FSDP cannot do here, said before any work."""
    if config.merge and config.lora_rank is not None and shards_parameters(accelerator):
        raise UnlearnError("under ZeRO-3 or FSDP a LoRA run saves its adapter: leave out --merge "
                           "and load the adapter folder with --model (it merges on load)")
    if shards_optimizer(accelerator):
        log.warning("DeepSpeed/FSDP shard the optimiser state: no per-epoch checkpoint is written "
                    "(--resume cannot continue this run) and the collapse guard stops the run "
                    "instead of rolling an epoch back")


@dataclass
class _Run:
    """The state of one run: what trains, on what, and what has happened so far."""

    config: UnlearnConfig
    accelerator: object
    method: object
    weights: dict
    tokenizer: object
    records: dict
    options: TermOptions = field(default_factory=TermOptions)  # the terms' hyperparameters
    model: object = None
    reference: object = None
    optimizer: object = None
    forget: list = field(default_factory=list)
    analogous: list = field(default_factory=list)
    retain: list = field(default_factory=list)
    mismatch: list = field(default_factory=list)  # completions for LLMU's mismatch batch
    preferred: list = field(default_factory=list)  # DPO's preferred answers
    relabel: list = field(default_factory=list)  # each forget opening + an analogous body
    partners: list = field(default_factory=list)  # each forget text's pool text, token ids
    probe: list = field(default_factory=list)
    active: list = field(default_factory=list)
    record: dict = field(default_factory=dict)
    thresholds: Thresholds | None = None
    split: Split | None = None  # how scoring work splits over processes
    timings: dict = field(default_factory=lambda: {"training": 0.0, "scoring": 0.0})
    epoch: int = 0

    @property
    def unwrapped(self):
        """The model itself (not its DDP/DeepSpeed wrapper): what generates, scores and saves."""
        return self.accelerator.unwrap_model(self.model)

    def start(self) -> None:
        """Calibrate, score the untouched model (epoch 0) and write the first checkpoint."""
        clock = time.perf_counter()
        self.thresholds = _cached_thresholds(
            self.config, self.record["model"].get("sha256"),
            lambda: _thresholds(self.config, self.records, self.accelerator, self.unwrapped,
                                self.tokenizer),
            write=self.accelerator.is_main_process)
        self.record["thresholds"] = self.thresholds.as_dict()
        self.timings["calibration"] = time.perf_counter() - clock
        self.record["guard"] = {"events": [], "lr": self.config.learning_rate,
                                "probe_ppl_start": self._probe_ppl()}
        self._score(0, {}, drop=False)
        self._checkpoint()

    def resume_from(self, checkpoint: dict) -> None:
        load_trainable_state(self.unwrapped, checkpoint["params"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.record = checkpoint["record"]
        self.active = list(checkpoint["active"])
        self.epoch = int(checkpoint["epoch"])
        self.thresholds = Thresholds(**self.record["thresholds"])
        _set_lr(self.optimizer, self.record["guard"]["lr"])
        torch.set_rng_state(checkpoint["torch_rng"])

    def train(self) -> None:
        """Epochs until a stop rule fires; the collapse guard may roll an epoch back."""
        config, guard = self.config, self.record["guard"]
        sharded = shards_optimizer(self.accelerator)
        while "stopped" not in self.record and self.epoch < config.max_epochs:
            self.epoch += 1
            good = None if sharded else snapshot(self.unwrapped, self.optimizer)
            clock = time.perf_counter()
            losses = _train_epoch(self, self.epoch)
            self.timings["training"] += time.perf_counter() - clock
            clock = time.perf_counter()
            probe_ppl = self._probe_ppl()
            self.timings["guard_probe"] = self.timings.get("guard_probe", 0.0) + (
                time.perf_counter() - clock)
            problem = _collapse(losses, probe_ppl, guard["probe_ppl_start"], config)
            if problem:
                self._roll_back(good, problem)
                continue
            entry = self._score(self.epoch, losses, drop=self.method.iterative_refinement)
            reason = _stop_reason(entry, self.thresholds, self.active)
            if reason:
                self.record["stopped"] = {"epoch": self.epoch, "reason": reason}
            self._checkpoint()
        self.record.setdefault(
            "stopped", {"epoch": self.epoch, "reason": "max_epochs reached"}
        )

    def _roll_back(self, good: dict | None, problem: str) -> None:
        if good is None:
            raise UnlearnError(
                f"collapse guard, epoch {self.epoch}: {problem}; under DeepSpeed/FSDP the last "
                "good weights are not kept, so nothing was written: run again with a lower --lr")
        guard = self.record["guard"]
        restore(self.unwrapped, self.optimizer, good)
        events = guard["events"]
        new_lr = guard["lr"] * self.config.guard_lr_factor
        action = "stop" if len(events) >= self.config.guard_max_rollbacks else "lower lr"
        events.append({"epoch": self.epoch, "problem": problem, "action": action,
                       "lr_before": guard["lr"], "lr_after": new_lr if action != "stop" else None})
        log.warning("Collapse guard, epoch %d: %s; rolled back to the last good epoch, %s",
                    self.epoch, problem, "stopping" if action == "stop" else f"lr -> {new_lr:g}")
        if action == "stop":
            self.record["stopped"] = {
                "epoch": self.epoch - 1,
                "reason": f"collapse guard: {problem}; returned the last good epoch",
            }
        else:
            guard["lr"] = new_lr
            _set_lr(self.optimizer, new_lr)
        self.record["epochs"].append({"epoch": self.epoch, "rolled_back": problem,
                                      "active": sum(self.active), "dropped": [],
                                      "losses": {}, "mean": {}, "samples": []})

    def _score(self, epoch: int, losses: dict, drop: bool) -> dict:
        clock = time.perf_counter()
        with self.accelerator.autocast():
            score = (_score_epoch_at_cuts if self.method.split == "opening" else _score_epoch)
            entry = score(epoch, self.unwrapped, self.tokenizer, self.forget, self.active,
                          self.thresholds, self.config, losses, drop=drop, split=self.split)
        self.timings["scoring"] += time.perf_counter() - clock
        self.record["epochs"].append(entry)
        self.record["dropped_order"].extend(entry["dropped"])
        _log_epoch(entry, len(self.forget))
        return entry

    def _probe_ppl(self) -> float | None:
        if not self.probe or self.config.guard_ppl_factor is None:
            return None
        with torch.no_grad(), self.accelerator.autocast():
            return float(perplexity(self.unwrapped, self.probe))

    def _checkpoint(self) -> None:
        clock = time.perf_counter()
        self.record["timings_s"] = {k: round(v, 3) for k, v in self.timings.items()}
        state = {"epoch": self.epoch, "active": self.active, "record": self.record,
                 "torch_rng": torch.get_rng_state()}
        if self.accelerator.is_main_process and not shards_optimizer(self.accelerator):
            save_checkpoint(self.config.out, self.unwrapped, self.optimizer, state)
        self.accelerator.wait_for_everyone()
        self.timings["checkpoint"] = self.timings.get("checkpoint", 0.0) + (
            time.perf_counter() - clock)


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _collapse(losses: dict, probe_ppl: float | None, start_ppl: float | None, config) -> str:
    """Why this epoch broke the model, or '' when it did not."""
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        return f"non-finite loss ({', '.join(bad)})"
    if probe_ppl is not None and not math.isfinite(probe_ppl):
        return "non-finite held-out perplexity"
    limit = config.guard_forget_nll
    if limit is not None and "forget_ga" in losses and -losses["forget_ga"] > limit:
        return f"runaway forget loss (NLL {-losses['forget_ga']:.1f} > {limit:g})"
    factor = config.guard_ppl_factor
    if probe_ppl is not None and start_ppl and probe_ppl > factor * start_ppl:
        return (f"held-out perplexity {probe_ppl:.1f} > {factor:g} x its start value "
                f"{start_ppl:.1f}")
    return ""


def _probe_texts(config, records, tokenizer) -> list[list[int]]:
    """A small held-out utility probe: calibration texts, else pool texts no forget sample got."""
    texts = [r.text for r in (records["calibration"] or records["pool"] or records["retain"])]
    if not texts:
        return []
    ids = tokenizer(texts[: config.guard_probe_texts], add_special_tokens=False)["input_ids"]
    return [list(i)[:256] for i in ids if len(i) > 1]


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


def _split(config, records: list, tokenizer, role: str) -> list[Sample]:
    """Split texts the way the method reads them: the paper's prefix/suffix window, or a short
    opening followed by the whole rest."""
    if METHODS[config.method].split == "opening":
        return split_after_opening(records, tokenizer, config.opening_tokens, role=role)
    return split_records(records, tokenizer, config.prefix_tokens, config.suffix_tokens,
                         role=role)


def _relabel_targets(config, records, tokenizer, forget: list[Sample]):
    """Each forget sample's opening followed by the body of its nearest pool text: what the
    model learns to say instead; and each chosen pool text's token ids (the partner that tells
    shared wording from what is the forget text's own). Only pool texts serve (never retain
    texts, whose facts the forgotten text must not take over)."""
    if not records["pool"]:
        raise UnlearnError(
            f"method '{config.method}' needs --pool: texts of the same kind with other facts, "
            "whose bodies become the forget texts' new continuations"
        )
    chosen, info = _nearest(config, records, forget, ("pool",))
    bodies = _split(config, chosen, tokenizer, "pool")
    rows = [f.prefix_ids + b.suffix_ids[: max(len(f.suffix_ids), 1)]
            for f, b in zip(forget, bodies)]
    return rows, [b.input_ids for b in bodies], info


def _pair(config, records, tokenizer, forget: list[Sample]) -> tuple[list[list[int]], list[dict]]:
    """Each forget sample's nearest analogous text (pool + retain), as token ids."""
    if not records["pool"] and not records["retain"]:
        raise UnlearnError(
            f"method '{config.method}' needs analogous texts: give --pool (texts of the same kind "
            "with other facts) and/or --retain"
        )
    chosen, info = _nearest(config, records, forget, ("pool", "retain"))
    cap = max(len(s.input_ids) for s in forget)
    ids = tokenizer([r.text for r in chosen], add_special_tokens=False)["input_ids"]
    return [list(i)[:cap] for i in ids], info


def _nearest(config, records, forget: list[Sample], roles: tuple[str, ...]):
    """Each forget sample's nearest text among the given roles' records (sentence embeddings,
    FAISS): the chosen records, in forget order, and one ``pairs`` entry each for run.json."""
    candidates = [(role, r) for role in roles for r in records[role]]
    pairs = pair_analogous([s.text for s in forget], [r.text for _, r in candidates],
                           embed=_embedder(config.embedder_model))
    chosen = [candidates[p.candidate_index] for p in pairs]
    info = [{"forget_id": forget[p.forget_index].id, "analogous_id": record.id, "source": role,
             "similarity": round(float(p.similarity), 4)}
            for p, (role, record) in zip(pairs, chosen)]
    return [record for _, record in chosen], info


def _embedder(model_dir: str | None):
    from unlearnlm.data.neighbors import embed_texts

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


REFUSAL = " I don't know."  # DPO's preferred answer with dpo_preferred: refusal (as in TOFU)


def _other_suffixes(config, records, tokenizer, use: str, fix: str = "") -> list[list[int]]:
    """Suffixes of the retain and pool texts, split like the forget set; texts equal to a forget
    text, and texts too short to have a suffix, are left out."""
    forget_texts = {r.text.strip() for r in records["forget"]}
    others = [r for role in ("retain", "pool") for r in records[role]
              if r.text.strip() not in forget_texts]
    if not others:
        raise UnlearnError(
            f"method '{config.method}' needs retain or pool texts ({use}): give --retain or "
            f"--pool{fix}"
        )
    lengths = [len(i) for i in tokenizer([r.text for r in others],
                                         add_special_tokens=False)["input_ids"]]
    usable = [r for r, n in zip(others, lengths)
              if r.suffix is not None or n > config.prefix_tokens]
    if not usable:
        raise UnlearnError(
            f"none of the {len(others)} retain/pool texts is longer than prefix_tokens="
            f"{config.prefix_tokens} tokens ({use}): give longer texts or lower --prefix-tokens"
        )
    samples = split_records(usable, tokenizer, config.prefix_tokens, config.suffix_tokens,
                            role="retain/pool")
    return [s.suffix_ids for s in samples]


def _preferred_answers(config, records, tokenizer) -> list[list[int]]:
    """DPO's preferred answers: the refusal, or the suffixes of other texts."""
    if config.dpo_preferred == "refusal":
        return [list(tokenizer(REFUSAL, add_special_tokens=False)["input_ids"])]
    return _other_suffixes(config, records, tokenizer, "their suffixes are the preferred answers",
                           fix=", or set --dpo-preferred refusal")


# the settings a calibration depends on, besides the model's weights and the calibration texts
CALIBRATION_KEYS = ("prefix_tokens", "suffix_tokens", "decoding", "num_beams", "scorer_model",
                    "scorer_layers", "el_n", "calibrate_el", "el_threshold",
                    "calibration_quantile", "calibration_stop", "mixed_precision",
                    "opening_tokens", "probe_cuts", "probe_tokens", "probe_n")


def _cached_thresholds(config, model_hash: str | None, compute, write: bool = True) -> Thresholds:
    """``compute()``, or the thresholds in ``config.calibration_cache`` when they were made for
    the same weights, calibration texts and scoring settings; a fresh result is written there
    (when ``write``: by one process only)."""
    if not (config.calibration_cache and config.calibrate_on and model_hash):
        return compute()
    key = {"model_sha256": model_hash, "calibration_sha256": file_sha256(config.calibrate_on),
           "split": METHODS[config.method].split,
           **{name: getattr(config, name) for name in CALIBRATION_KEYS}}
    cache = Path(config.calibration_cache)
    try:
        stored = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = None
    if isinstance(stored, dict) and stored.get("key") == key:
        log.info("Reusing the calibrated thresholds in %s", cache)
        return Thresholds(**stored["thresholds"])
    thresholds = compute()
    if write:
        write_json(cache, {"key": key, "thresholds": thresholds.as_dict()})
    return thresholds


def _thresholds(config, records, accelerator, model, tokenizer) -> Thresholds:
    if METHODS[config.method].split == "opening":
        return _cut_thresholds(config, records, accelerator, model, tokenizer)
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


def _cut_thresholds(config, records, accelerator, model, tokenizer) -> Thresholds:
    """The cut-point test's thresholds, from --calibrate-on, else from the pool (texts of the
    same kind that the model is assumed not to have seen)."""
    texts, path = records["calibration"], config.calibrate_on
    if not texts:
        texts, path = records["pool"][:64], config.pool
        if not texts:
            raise UnlearnError(
                f"method '{config.method}' measures 'forgotten' against texts the model never "
                "saw: give --calibrate-on (or --pool)"
            )
        log.warning("No --calibrate-on: calibrating the drop test on %d pool texts", len(texts))
    samples = _split(config, texts, tokenizer, "calibration")
    partners = None
    if config.target_tokens == "distinct" and records["pool"]:
        # each never-seen text's nearest pool text, as the forget texts have theirs: the floor
        # of a distinct token is then measured on the same kind of tokens it bounds
        pairs = pair_analogous([s.text for s in samples], [r.text for r in records["pool"]],
                               embed=_embedder(config.embedder_model))
        chosen = [records["pool"][p.candidate_index].text for p in pairs]
        partners = [list(i) for i in tokenizer(chosen, add_special_tokens=False)["input_ids"]]
    log.info("Calibrating the cut-point test on %d never-seen texts", len(samples))
    with accelerator.autocast():
        return calibrate_cuts(model, tokenizer, samples, config, str(path), partners)


def _train_epoch(run: _Run, epoch: int) -> dict[str, float]:
    """One pass over the active forget samples; returns the mean of each loss term."""
    config, accelerator, model = run.config, run.accelerator, run.model
    model.train()
    rng = random.Random(config.seed * 1000 + epoch)
    order = [i for i, a in enumerate(run.active) if a]
    rng.shuffle(order)
    sums: dict[str, float] = {}
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    quiet = not accelerator.is_main_process
    for batch in tqdm(batches, desc=f"epoch {epoch}", leave=False, unit="step", disable=quiet):
        parts = _build_batches(batch, run.forget, run.analogous, run.retain, rng, config,
                               run.tokenizer.pad_token_id, accelerator.device,
                               mismatch=run.mismatch, preferred=run.preferred,
                               relabel=run.relabel, partners=run.partners,
                               floor=run.thresholds.nll_floor, cap=run.thresholds.nll_cap,
                               token_floor=run.thresholds.token_floor)
        terms = unlearning_step(run.weights, model, run.reference, run.optimizer, accelerator,
                                parts, run.options)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value
    return {name: value / max(len(batches), 1) for name, value in sums.items()}


def unlearning_step(weights: dict[str, float], model, reference, optimizer, accelerator,
                    parts: dict[str, dict],
                    options: TermOptions | None = None) -> dict[str, float]:
    """One optimiser step of the weighted loss on one global batch (``parts``: a collated batch
    per kind); with several processes each takes its share of the rows
    (``train.distributed``). Returns the total and each term's value over the global batch."""
    share, empty = shard_batches(parts, accelerator.process_index, accelerator.num_processes)
    with accelerator.autocast():
        loss, terms = combined_loss(weights, model, reference, share, options)
    if empty:  # nothing of this batch is ours: join the gradient all-reduce with zeros
        loss, terms = loss * 0.0, dict.fromkeys(terms, 0.0)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    return mean_over_processes({"total": float(loss.detach()), **terms}, accelerator)


def _build_batches(batch, forget, analogous, retain, rng, config, pad, device, *,
                   mismatch=(), preferred=(), relabel=(), partners=(), floor=None, cap=None,
                   token_floor=None) -> dict:
    starts = [len(forget[i].prefix_ids) if config.loss_on == "suffix" else 1 for i in batch]
    parts = {"forget": collate([forget[i].input_ids for i in batch], starts, pad, device)}
    if floor is not None:
        parts["forget"]["floor"] = torch.tensor(floor, device=device)
        parts["forget"]["cap"] = cap
        parts["forget"]["token_floor"] = torch.tensor(
            floor if token_floor is None else token_floor, device=device)
    if relabel:
        parts["relabel"] = collate([relabel[i] for i in batch],
                                   [len(forget[i].prefix_ids) for i in batch], pad, device)
    if analogous:
        parts["analogous"] = collate([analogous[i] for i in batch], [1] * len(batch), pad, device)
    partners = analogous or partners
    if config.target_tokens == "distinct" and partners:
        keep_distinct_targets(parts["forget"], [partners[i] for i in batch])
    if retain:
        chosen = [retain[rng.randrange(len(retain))] for _ in batch]
        parts["retain"] = collate(chosen, [1] * len(chosen), pad, device)
    if mismatch:
        parts["mismatch"] = completion_batch([forget[i] for i in batch], mismatch, rng, pad,
                                             device)
    if preferred:
        parts["preference"] = completion_batch([forget[i] for i in batch], preferred, rng, pad,
                                               device, with_true_suffix=True)
    return parts


def keep_distinct_targets(forget_batch: dict, partners: list[list[int]]) -> None:
    """Unmark forget targets whose bigram (previous token, token) also occurs in the sample's
    analogous partner (``data.texts.distinct_positions``): wording the two share (a form's field
    names, common phrases) is what the analogous loss keeps, so gradient ascent goes only to
    what tells the forget text apart."""
    ids, mask = forget_batch["input_ids"], forget_batch["loss_mask"]  # (B, T)
    for row, partner in enumerate(partners):
        distinct = torch.tensor(distinct_positions(ids[row].tolist(), partner),
                                dtype=mask.dtype, device=mask.device)
        mask[row] = mask[row] * distinct


def completion_batch(samples: list[Sample], completions: list[list[int]], rng, pad: int, device,
                     with_true_suffix: bool = False) -> dict[str, torch.Tensor]:
    """Each sample's prefix followed by a random completion; ``loss_mask`` covers the completion
    only. ``with_true_suffix`` appends the same prefixes with their own suffixes as rows B..2B-1
    (the layout of the ``preference`` batch: preferred rows, then rejected rows)."""
    prefixes = [s.prefix_ids for s in samples]
    rows = [p + list(completions[rng.randrange(len(completions))]) for p in prefixes]
    if with_true_suffix:
        rows += [s.input_ids for s in samples]
        prefixes += prefixes
    return collate(rows, [len(p) for p in prefixes], pad, device)


def _score_epoch(
    epoch, model, tokenizer, forget, active, thresholds, config, losses, drop: bool,
    split: Split,
) -> dict:
    """Score the active samples, drop the forgotten ones (when ``drop``), and summarise. The
    scoring is shared out over the processes by ``split`` and gathered back."""
    model.eval()
    indices = [i for i, a in enumerate(active) if a]
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        gen = split.map(lambda part: generation_scores(model, tokenizer, part, config),
                        [forget[i] for i in indices])
        mem = {"ma": split.map(lambda part: memorisation_scores(
            model, part, pad, config.el_n, False)["ma"], forget), "el": [None] * len(forget)}
        mean_ma = sum(mem["ma"]) / len(forget)
        # EL is the costly metric; the stop test needs it only once MA is under its threshold
        if config.el_every_epoch or (config.stop_on_el and thresholds.under(mean_ma, "ma")):
            mem["el"] = split.map(lambda part: el_scores(model, part, pad, config.el_n), forget)
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


def _score_epoch_at_cuts(
    epoch, model, tokenizer, forget, active, thresholds, config, losses, drop: bool,
    split: Split,
) -> dict:
    """The cut-point version of ``_score_epoch``: continuations from several cuts and the true
    continuation's NLL for the active samples, MA for all; drop the forgotten ones."""
    model.eval()
    indices = [i for i, a in enumerate(active) if a]
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        probe = dict(zip(indices, split.map(
            lambda part: cut_probe_scores(model, tokenizer, part, config),
            [forget[i] for i in indices])))
        ma = split.map(lambda part: memorisation_scores(model, part, pad, config.el_n,
                                                        False)["ma"], forget)
    samples, dropped = [], []
    for i, sample in enumerate(forget):
        entry = {"id": sample.id, "ma": ma[i], "el": None}
        if i in probe:
            entry.update(extraction=probe[i]["extraction"], nll=probe[i]["nll"],
                         cuts=probe[i]["cuts"])
            if drop and is_forgotten_at_cuts(probe[i], thresholds):
                active[i] = False
                dropped.append(sample.id)
        entry["active"] = active[i]
        samples.append(entry)
    return {"epoch": epoch, "losses": losses, "active": sum(active), "dropped": dropped,
            "mean": _means(samples), "samples": samples}


def _means(samples: list[dict]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("ma", "el", "bleu", "bertscore", "extraction", "nll"):
        values = [s[key] for s in samples if s.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


def _stop_reason(entry: dict, thresholds: Thresholds, active: list[bool]) -> str | None:
    if not any(active):
        return "every sample forgotten (none left active)"
    mean = entry["mean"]
    if (mean["el"] is not None and thresholds.under(mean["el"], "el")
            and thresholds.under(mean["ma"], "ma")):
        sign = thresholds.sign
        return (
            f"forget set under the EL/MA thresholds (EL {mean['el']:.4f} {sign} "
            f"{thresholds.el:.4f}, whole-text MA {mean['ma']:.4f} {sign} {thresholds.ma:.4f})"
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
    if mean.get("extraction") is not None:
        parts.append(f"cut overlap {mean['extraction']:.3f} NLL {mean['nll']:.2f}")
    if entry["losses"]:
        parts.append(f"loss {entry['losses'].get('total', 0.0):.3f}")
    log.info(", ".join(parts))
