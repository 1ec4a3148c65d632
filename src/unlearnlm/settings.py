"""Settings of an unlearning run, as one dataclass with a help string per field.

Values come from defaults, then a YAML file (``--config``), then command-line flags. Bad values
raise :class:`~unlearnlm.errors.UnlearnError` in ``__post_init__``, before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unlearnlm.errors import UnlearnError


def _f(default: Any, help: str, **kw) -> Any:  # noqa: A002 - "help" reads best here
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class UnlearnConfig:
    """Everything an ``unlearnlm unlearn`` run needs; ``run.json`` records all of it."""

    model: str = _f("", "model directory, hub id, .gguf file or 'smollm2-135m'")
    forget: str = _f("", "texts to forget (.jsonl with text or prefix+suffix, .csv, .txt)")
    out: str = _f("", "output directory: the unlearned model and run.json")
    pool: str | None = _f(None, "analogous pool: texts of the same kind with other facts")
    retain: str | None = _f(None, "texts whose knowledge must stay; they join the pairing pool")
    calibrate_on: str | None = _f(
        None, "texts of the same kind the model never saw: thresholds are set from its scores"
    )
    calibration_cache: str | None = _f(
        None, "JSON file of calibrated thresholds to share between runs: reused when it was made "
        "for the same model weights, calibration texts and scoring settings, else calibrated "
        "anew and written; null: calibrate in every run"
    )
    method: str = _f("icu", "unlearning method (see `unlearnlm methods`)")
    loss_weights: dict[str, float] = _f({}, "override the method's loss weights, by term name")
    dpo_preferred: str = _f(
        "other", "dpo's preferred answer: 'other' (a random retain/pool text's suffix) or "
        "'refusal' (\" I don't know.\")"
    )
    lr: float = _f(5e-6, "learning rate (paper: 5e-6)")
    batch_size: int = _f(8, "forget samples per step (paper: 8)")
    max_epochs: int = _f(30, "stop after this many epochs at the latest")
    trainable_layers: int | None = _f(
        None, "train only the last N transformer blocks (embeddings frozen); null: all"
    )
    adam_betas: list[float] = _f([0.9, 0.98], "Adam betas (official ICU code: 0.9, 0.98)")
    seed: int = _f(42, "random seed (shuffling, initialisation of anything random)")
    prefix_tokens: int = _f(50, "prefix length in the model's tokens (paper: 50)")
    suffix_tokens: int | None = _f(50, "suffix length in tokens (paper: 50); null: all the rest")
    loss_on: str = _f("suffix", "forget loss positions: 'suffix' (paper) or 'all' (official code)")
    forget_tokens: str = _f(
        "all", "gradient-ascent targets: 'all' suffix tokens (paper) or 'distinct': only tokens "
        "whose bigram is absent from the sample's analogous text, keeping shared wording out"
    )
    drop_rule: str = _f("and", "'and' (paper): both scores under threshold; 'or' (official code)")
    bleu_threshold: float = _f(0.01, "a generation with BLEU under this counts as forgotten")
    bertscore_threshold: float = _f(0.3, "a generation with BERTScore-F1 under this is forgotten")
    decoding: str = _f("greedy", "generation for the drop test: 'greedy' (paper) or 'beam'")
    num_beams: int = _f(2, "beams when decoding is 'beam' (official code: 2)")
    scorer_model: str | None = _f(None, "BERTScore model directory (default: all-MiniLM-L6-v2)")
    scorer_layers: int = _f(6, "BERTScore layer of the scorer model")
    embedder_model: str | None = _f(None, "sentence embedder for pairing (default: MiniLM)")
    el_n: int = _f(10, "n of the extraction likelihood EL_n (paper: 10)")
    el_every_epoch: bool = _f(
        True, "score EL_n of every sample each epoch (false: only once MA is under its threshold)"
    )
    stop_on_el: bool = _f(
        True, "also stop once mean EL_n and MA of the forget set fall under their thresholds; "
        "false: stop only when no sample is active or at max_epochs, and skip the costly EL_n"
    )
    el_threshold: float = _f(0.0499, "stop when mean EL_n of the forget set falls under this")
    ma_threshold: float = _f(0.5994, "... and mean memorisation accuracy falls under this")
    calibrate_el: bool = _f(
        True, "calibrate the EL_n threshold too (costly: one generation per position per text)"
    )
    calibration_quantile: float = _f(
        0.5, "quantile of the never-seen scores used as the drop test's BLEU/BERTScore thresholds"
    )
    calibration_stop: str = _f(
        "mean", "statistic of the never-seen EL_n/MA scores used as the stop thresholds: 'mean' "
        "(Jang et al.: the forget set's mean against never-seen text's mean) or 'quantile' (the "
        "same quantile as the drop test; with EL_n, whose median is often 0, far stricter)"
    )
    guard_ppl_factor: float | None = _f(
        3.0, "roll back an epoch that lifts held-out perplexity past this factor; null: off"
    )
    guard_forget_nll: float | None = _f(
        None, "roll back an epoch whose mean forget NLL (nats/token) passes this; null: off"
    )
    guard_lr_factor: float = _f(0.5, "after a rollback, multiply the learning rate by this")
    guard_max_rollbacks: int = _f(2, "after this many rollbacks the next one stops the run")
    guard_probe_texts: int = _f(16, "held-out texts (calibration, else pool) for the probe")
    mixed_precision: str = _f("no", "'no', 'bf16' or 'fp16' (autocast through accelerate)")
    cpu: bool = _f(False, "run on the CPU even when a GPU is present")
    log_text: bool = _f(False, "allow forget-set text in logs and console (private data)")
    overwrite: bool = _f(False, "replace a non-empty output directory")
    trust_pickle: bool = _f(False, "allow pickled (.bin) weights, which can run code")
    trust_remote_code: bool = _f(False, "allow model code from the model directory or hub")

    def __post_init__(self) -> None:
        from unlearnlm.methods.losses import LOSS_TERMS, METHODS

        if self.method not in METHODS:
            raise UnlearnError(
                f"unknown method '{self.method}'; choose one of: {', '.join(sorted(METHODS))}"
            )
        for name in self.loss_weights:
            if name not in LOSS_TERMS:
                raise UnlearnError(
                    f"unknown loss term '{name}' in loss_weights; known: {', '.join(LOSS_TERMS)}"
                )
        self._check_choices()
        self._check_ranges()

    def _check_choices(self) -> None:
        choices = {
            "loss_on": ("suffix", "all"),
            "drop_rule": ("and", "or"),
            "forget_tokens": ("all", "distinct"),
            "decoding": ("greedy", "beam"),
            "mixed_precision": ("no", "bf16", "fp16"),
            "dpo_preferred": ("other", "refusal"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UnlearnError(
                    f"{name} must be one of {', '.join(allowed)}, not '{getattr(self, name)}'"
                )

    def _check_ranges(self) -> None:
        positive = ("lr", "batch_size", "max_epochs", "prefix_tokens", "el_n", "num_beams")
        for name in positive:
            if getattr(self, name) is None or getattr(self, name) <= 0:
                raise UnlearnError(f"{name} must be positive, got {getattr(self, name)}")
        if self.trainable_layers is not None and self.trainable_layers <= 0:
            raise UnlearnError(
                f"trainable_layers must be positive or null, got {self.trainable_layers}"
            )
        if self.suffix_tokens is not None and self.suffix_tokens <= 0:
            raise UnlearnError(f"suffix_tokens must be positive or null, got {self.suffix_tokens}")
        if not 0.0 < self.calibration_quantile < 1.0:
            raise UnlearnError("calibration_quantile must lie strictly between 0 and 1")
        if self.calibration_stop not in ("mean", "quantile"):
            raise UnlearnError(
                f"calibration_stop must be 'mean' or 'quantile', got {self.calibration_stop!r}"
            )
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise UnlearnError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")

    def require_paths(self) -> None:
        """Check the settings a run cannot start without."""
        for name in ("model", "forget", "out"):
            if not getattr(self, name):
                raise UnlearnError(f"--{name} is required")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    @classmethod
    def from_sources(cls, yaml_path: str | None = None, **overrides: Any) -> UnlearnConfig:
        """Defaults, then the YAML file, then the overrides that are not None."""
        values: dict[str, Any] = load_yaml(yaml_path) if yaml_path else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UnlearnError(
                f"unknown setting(s) {', '.join(unknown)}; see `unlearnlm unlearn --help`"
            )
        return cls(**values)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of settings; keys may use '-' or '_'."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnlearnError(f"cannot read config file {path}: {exc.strerror}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise UnlearnError(f"config file {path} is not valid YAML: {first}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UnlearnError(f"config file {path} must hold a mapping of setting: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
