"""One settings system: a dataclass per command, validated in one place, flags made from fields.

Every command's settings derive from :class:`Settings`: :class:`UnlearnConfig` (``unlearn``) and
:class:`FinetuneSettings` (``finetune``) here, ``EvalSettings`` in ``evaluate/settings.py``,
``BenchSettings`` in ``bench/runner.py`` and ``DemoSettings`` in ``demo.py``. A field is declared
with :func:`setting`: its default, a help string and its constraints (``choices``, ``positive``,
``interval``). ``Settings.__post_init__`` checks each field's type and constraints, then the
class's own rules (:meth:`Settings.check`), and raises :class:`~unlearnlm.errors.UnlearnError`
before any work starts.

Values come from the defaults, then a YAML file (``--config``), then command-line flags
(:meth:`Settings.from_sources`). :func:`add_flags` makes one flag per field (``lr`` is ``--lr``,
``prefix_tokens`` is ``--prefix-tokens``; a boolean ``x`` is ``--x`` / ``--no-x``) and
:func:`settings_from_args` reads them back.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from unlearnlm.errors import UnlearnError

S = TypeVar("S", bound="Settings")
MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16")
NULL_WORDS = ("none", "null", "all", "off")


def setting(default: Any, help: str, *,  # noqa: A002 - "help" reads best here
            choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
            positive: bool = False, interval: str | None = None, flag: str | None = None) -> Any:
    """A settings field: ``choices`` (or a function giving them), ``positive`` (> 0; null where
    the type allows it), ``interval`` such as ``"(0, 1]"``; ``flag`` renames the command-line
    flag."""
    meta = {"help": help, "choices": choices, "positive": positive, "interval": interval,
            "flag": flag}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


_f = setting  # the short name of UnlearnConfig's field table


class Settings:
    """Base of every command's settings dataclass: validation, YAML, the field help."""

    command: ClassVar[str] = ""  # the ``unlearnlm`` sub-command these settings belong to
    required: ClassVar[tuple[str, ...]] = ()  # fields a run cannot start without

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, _checked(f, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """The class's own rules, across fields; runs after every field passed its checks."""

    def require(self) -> None:
        """Check the settings a run cannot start without."""
        for name in self.required:
            if getattr(self, name) in (None, ""):
                raise UnlearnError(f"--{_flag_name(name)} is required (a flag or a key of "
                                   "--config)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def from_sources(cls: type[S], yaml_path: str | None = None, **overrides: Any) -> S:
        """Defaults, then the YAML file, then the overrides that are not None."""
        values: dict[str, Any] = load_yaml(yaml_path) if yaml_path else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return _build(cls, values)


def _flag_name(name: str) -> str:
    return name.replace("_", "-")


def _checked(f: dataclasses.Field, value: Any) -> Any:
    """The field's value, type-checked (an int where a float is wanted becomes a float), and
    its declared constraints."""
    kind = str(f.type)
    optional = "None" in kind
    if value is None:
        if not optional:
            raise UnlearnError(f"{f.name} must not be null")
        return value
    value = _typed(f.name, kind.split("|")[0].strip(), value)
    choices = f.metadata.get("choices")
    allowed = choices() if callable(choices) else choices
    if allowed and value not in allowed:
        raise UnlearnError(f"{f.name} must be one of {', '.join(allowed)}, not '{value}'")
    if f.metadata.get("positive") and value <= 0:
        extra = " or null" if optional else ""
        raise UnlearnError(f"{f.name} must be positive{extra}, got {value}")
    interval = f.metadata.get("interval")
    if interval and not _inside(value, interval):
        raise UnlearnError(f"{f.name} must lie in {interval}, got {value}")
    return value


def _typed(name: str, kind: str, value: Any) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise UnlearnError(f"{name} must be true or false, got {value!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise UnlearnError(f"{name} must be a whole number, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UnlearnError(f"{name} must be a number, got {value!r} (YAML reads 5e-6 as "
                               "text: write 5.0e-6)")
        return float(value)
    elif kind == "str":
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise UnlearnError(f"{name} must be text, got {value!r}")
    return value


def _inside(value: float, interval: str) -> bool:
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    return above and below


# Settings that several commands share, declared once: default, help and constraints. A command
# may give its own default or help (bench fine-tunes and unlearns with other learning rates).
_SHARED: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "model": ("", "model directory, hub id, .gguf file or 'smollm2-135m'", {}),
    "lr": (5e-6, "learning rate", {"positive": True}),
    "batch_size": (8, "texts per step", {"positive": True}),
    "max_epochs": (30, "stop after this many epochs at the latest", {"positive": True}),
    "seed": (42, "random seed (shuffling, initialisation of anything random)", {}),
    "prefix_tokens": (50, "prefix length in the model's tokens (paper: 50)", {"positive": True}),
    "suffix_tokens": (50, "suffix length in tokens (paper: 50); null: all the rest",
                      {"positive": True}),
    "trainable_layers": (None, "train only the last N transformer blocks (embeddings frozen); "
                         "null: all", {"positive": True}),
    "mixed_precision": ("no", "'no', 'bf16' or 'fp16' (autocast through accelerate)",
                        {"choices": MIXED_PRECISION}),
    "el_n": (10, "n of the extraction likelihood EL_n (paper: 10)", {"positive": True}),
    "overwrite": (False, "replace a non-empty output directory", {}),
    "lora_rank": (None, "train LoRA adapters of this rank (peft) instead of the weights; the "
                  "frozen reference is then the same model with its adapters off; null: train the "
                  "weights", {"positive": True}),
    "lora_alpha": (16.0, "LoRA scale: the adapters add (alpha / rank) B A to each weight",
                   {"positive": True}),
    "lora_target_modules": ([], "modules to adapt, a comma list such as q_proj,v_proj; empty: "
                            "peft's defaults for the architecture", {}),
    "merge": (False, "with --lora-rank: save the model with the adapter merged in (a plain "
              "model); off: save the adapter alone, which --model reads back on its base (runs "
              "without LoRA always save a plain model)", {}),
    "gradient_checkpointing": (False, "recompute each block's activations in the backward pass "
                               "instead of keeping them: less memory, more compute", {}),
    "dtype": ("float32", "dtype of the weights: 'bfloat16' halves their memory (for GPUs; slow "
              "on CPUs without bf16 instructions)", {"choices": DTYPES}),
    # the inference-time baselines (lm/guards.py)
    "guard_opening_tokens": (8, "guard-prompt: each forget text is named by this many tokens of "
                             "its opening (never past its prefix)", {"positive": True}),
    "icul_examples": (4, "icul: kept texts shown whole, with their true continuation, after the "
                      "forget prefixes with other continuations", {"interval": "[0, inf)"}),
    "filter_ngram": (8, "guard-filter: a generation that reproduces this many consecutive "
                     "tokens of a forget text is withheld", {"positive": True}),
    # where `unlearnlm data fetch` (and the demo, for what it lacks) reads GitHub files from
    "github_raw_url": ("https://raw.githubusercontent.com", "base URL of raw GitHub files: "
                       "BASE/OWNER/REPO/REF/PATH (a mirror, or a local server in tests)", {}),
}
_UNSET = object()


def shared(name: str, default: Any = _UNSET, help: str | None = None) -> Any:  # noqa: A002
    """The field of a setting several commands share (see ``_SHARED``), with its constraints."""
    base_default, base_help, constraints = _SHARED[name]
    return setting(base_default if default is _UNSET else default, help or base_help,
                   **constraints)


def _method_names() -> tuple[str, ...]:
    from unlearnlm.methods.losses import METHODS

    return tuple(sorted(METHODS))


@dataclass
class UnlearnConfig(Settings):
    """Everything an ``unlearnlm unlearn`` run needs; ``run.json`` records all of it."""

    command = "unlearn"
    required = ("model", "forget", "out")

    model: str = shared("model")
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
    method: str = _f("relabel", "unlearning method (see `unlearnlm methods`)",
                     choices=_method_names)
    loss_weights: dict[str, float] = _f({}, "override the method's loss weights, by term name",
                                        flag="loss-weight")
    dpo_preferred: str = _f(
        "other", "dpo's preferred answer: 'other' (a random retain/pool text's suffix) or "
        "'refusal' (\" I don't know.\")", choices=("other", "refusal")
    )
    simnpo_beta: float = _f(
        4.5, "simnpo: beta of -(2/beta) log sigmoid(-(beta/|y|) log P(y) - gamma) (open-"
        "unlearning's TOFU setting: 4.5)", positive=True)
    simnpo_gamma: float = _f(0.0, "simnpo: the margin gamma (0 in open-unlearning's TOFU setting)")
    undial_strength: float = _f(
        10.0, "undial: how far the true token's logit is lowered in the frozen model's logits "
        "that the policy learns (open-unlearning: 10)", positive=True)
    rmu_layer: int | None = _f(
        None, "rmu: the block (0-based) whose output is steered; null: the block at 7/32 of the "
        "depth, as WMDP's layer 7 of Zephyr-7B's 32 (block 6 of SmolLM2-135M's 30), or the first "
        "trained block when --trainable-layers trains only later ones", interval="[0, inf)")
    rmu_coefficient: float = _f(
        300.0, "rmu: c, the length of the random vector the forget activations are pushed to "
        "(WMDP: 6.5 for Zephyr-7B; 300: about 3x the length of SmolLM2-135M's block-6 "
        "outputs, see docs/methods.md)",
        positive=True)
    lr: float | None = shared(
        "lr", None, "learning rate; null: the method's own (relabel 1e-4; ICU and the baselines "
        "5e-6, the paper's)")
    batch_size: int = shared("batch_size", 8, "forget samples per step (paper: 8)")
    max_epochs: int = shared("max_epochs", 30)
    trainable_layers: int | None = shared("trainable_layers")
    lora_rank: int | None = shared("lora_rank")
    lora_alpha: float = shared("lora_alpha")
    lora_target_modules: list[str] = shared("lora_target_modules")
    merge: bool = shared("merge")
    gradient_checkpointing: bool = shared("gradient_checkpointing")
    dtype: str = shared("dtype")
    adam_betas: list[float] = _f([0.9, 0.98], "Adam betas (official ICU code: 0.9, 0.98)")
    seed: int = shared("seed")
    prefix_tokens: int = shared("prefix_tokens")
    suffix_tokens: int | None = shared("suffix_tokens")
    opening_tokens: int = _f(
        8, "methods that cut a plain text after its opening (relabel): the opening's length in "
        "tokens (at most a quarter of the text); every later token is unlearned and checked",
        positive=True
    )
    probe_cuts: int = _f(
        4, "relabel's drop test: greedy continuations from this many cut points spread over "
        "each text after its opening", positive=True
    )
    probe_tokens: int = _f(24, "relabel's drop test: tokens generated from each cut point",
                           positive=True)
    probe_n: int = _f(
        4, "relabel's drop test: n-gram order of the overlap between a continuation and the true "
        "text (the share of generated n-grams found in the truth, as in EL_n)", positive=True
    )
    loss_on: str = _f("suffix", "forget loss positions: 'suffix' (paper) or 'all' (official code)",
                      choices=("suffix", "all"))
    forget_tokens: str | None = _f(
        None, "gradient-ascent targets: 'all' suffix tokens (paper) or 'distinct': only tokens "
        "whose bigram is absent from the sample's analogous (or relabel) text, keeping shared "
        "wording out; null: the method's own", choices=("all", "distinct")
    )
    drop_rule: str = _f("and", "'and' (paper): both scores under threshold; 'or' (official code)",
                        choices=("and", "or"))
    bleu_threshold: float = _f(0.01, "a generation with BLEU under this counts as forgotten")
    bertscore_threshold: float = _f(0.3, "a generation with BERTScore-F1 under this is forgotten")
    decoding: str = _f("greedy", "generation for the drop test: 'greedy' (paper) or 'beam'",
                       choices=("greedy", "beam"))
    num_beams: int = _f(2, "beams when decoding is 'beam' (official code: 2)", positive=True)
    scorer_model: str | None = _f(None, "BERTScore model directory (default: all-MiniLM-L6-v2)")
    scorer_layers: int = _f(6, "BERTScore layer of the scorer model")
    embedder_model: str | None = _f(None, "sentence embedder for pairing (default: MiniLM)")
    el_n: int = shared("el_n")
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
        0.5, "quantile of the never-seen scores used as the drop test's BLEU/BERTScore thresholds",
        interval="(0, 1)"
    )
    calibration_stop: str = _f(
        "mean", "statistic of the never-seen EL_n/MA scores used as the stop thresholds: 'mean' "
        "(Jang et al.: the forget set's mean against never-seen text's mean) or 'quantile' (the "
        "same quantile as the drop test; with EL_n, whose median is often 0, far stricter)",
        choices=("mean", "quantile")
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
    quick_check: bool = _f(
        True, "after the run, a quick check (check.json, read by the report): the forget set "
        "against never-seen texts under greedy decoding, sampling, 8-bit and 4-bit weights, "
        "membership inference, and WikiText perplexity before and after", flag="check"
    )
    check_against: str | None = _f(
        None, "never-seen texts of the same kind for the check; null: --calibrate-on, else "
        "--pool, else the extraction benchmark's val split"
    )
    mixed_precision: str = shared("mixed_precision")
    cpu: bool = _f(False, "run on the CPU even when a GPU is present")
    log_text: bool = _f(False, "allow forget-set text in logs and console (private data)")
    overwrite: bool = shared("overwrite")
    trust_pickle: bool = _f(False, "allow pickled (.bin) weights, which can run code")
    trust_remote_code: bool = _f(False, "allow model code from the model directory or hub")

    def check(self) -> None:
        from unlearnlm.methods.losses import LOSS_TERMS

        for name in self.loss_weights:
            if name not in LOSS_TERMS:
                raise UnlearnError(
                    f"unknown loss term '{name}' in loss_weights; known: {', '.join(LOSS_TERMS)}"
                )
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise UnlearnError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        check_what_trains(self)

    @property
    def learning_rate(self) -> float:
        """The learning rate in force: the setting, else the method's own."""
        from unlearnlm.methods.losses import METHODS

        return self.lr if self.lr is not None else METHODS[self.method].lr

    @property
    def target_tokens(self) -> str:
        """Which forget tokens the ascent targets: the setting, else the method's own."""
        from unlearnlm.methods.losses import METHODS

        return self.forget_tokens or METHODS[self.method].targets


@dataclass
class DataSettings(Settings):
    """``unlearnlm data fetch``: where the GitHub-hosted sets are downloaded from (the hub's
    address is huggingface_hub's own ``HF_ENDPOINT``, its token ``HF_TOKEN``)."""

    command = "data"

    github_raw_url: str = shared("github_raw_url")
    force: bool = setting(False, "download again even when the set is already present")

    def check(self) -> None:
        if not self.github_raw_url.startswith(("http://", "https://")):
            raise UnlearnError(f"github_raw_url must start with http:// or https://, got "
                               f"{self.github_raw_url!r}")


@dataclass
class FinetuneSettings(Settings):
    """Everything ``unlearnlm finetune`` needs to make a model memorise texts (``finetune.json``
    records them)."""

    command = "finetune"
    required = ("model", "data", "out")

    model: str = shared("model", help="base model: directory, hub id, .gguf or 'smollm2-135m'")
    data: str = _f("", "training texts (.jsonl, .csv, .txt)")
    out: str = _f("", "output directory for the fine-tuned model and finetune.json")
    max_epochs: int = shared("max_epochs", 30)
    lr: float = shared("lr", 1e-4, "learning rate (AdamW, no weight decay)")
    batch_size: int = shared("batch_size", 8)
    target_accuracy: float | None = _f(
        0.95, "stop once mean suffix token accuracy reaches this; null: train all max_epochs",
        interval="(0, 1]")
    prefix_tokens: int = shared("prefix_tokens")
    suffix_tokens: int | None = shared("suffix_tokens")
    mixed_precision: str = shared("mixed_precision")
    seed: int = shared("seed")
    trainable_layers: int | None = shared("trainable_layers")
    lora_rank: int | None = shared("lora_rank")
    lora_alpha: float = shared("lora_alpha")
    lora_target_modules: list[str] = shared("lora_target_modules")
    merge: bool = shared("merge")
    gradient_checkpointing: bool = shared("gradient_checkpointing")
    dtype: str = shared("dtype")
    overwrite: bool = shared("overwrite")
    general: str | None = _f(
        None, "ordinary text (.jsonl, .csv, .txt) mixed into every step so that the model stays "
        "fluent while it memorises; null: the training texts alone")
    general_per_step: int = _f(4, "general texts per step", positive=True)
    general_tokens: int = _f(64, "general texts are cut to this many tokens", positive=True)
    general_loss: str = _f(
        "kl", "on general text: 'kl' keeps the model's distribution close to the base model's, "
        "'nll' trains on it", choices=("kl", "nll"))
    general_weight: float = _f(1.0, "weight of the general-text term", positive=True)
    dp_epsilon: float | None = _f(
        None, "train with DP-SGD (Opacus): each record's gradient clipped to --dp-max-grad-norm, "
        "Gaussian noise added, Poisson-sampled batches of --batch-size on average; the noise is "
        "set so that max_epochs spend this epsilon at --dp-delta (finetune.json records the "
        "epsilon actually spent); null: no DP", positive=True)
    dp_delta: float = _f(1e-5, "DP-SGD: the delta of the (epsilon, delta) guarantee; keep it "
                         "well under 1 / the number of records", interval="(0, 1)")
    dp_max_grad_norm: float = _f(1.0, "DP-SGD: each record's gradient is clipped to this L2 norm",
                                 positive=True)
    loss_on: str = _f(
        "all", "the tokens that carry the loss: 'all' (every token after the first) or 'suffix' "
        "(the suffix only, e.g. a question-answer record's answer)", choices=("all", "suffix"))

    def check(self) -> None:
        check_what_trains(self)
        if self.dp_epsilon is None:
            return
        if self.loss_on != "all":
            raise UnlearnError("--dp-epsilon trains on every token; give --loss-on all")
        if self.general:
            raise UnlearnError("--general cannot be combined with --dp-epsilon: the mixed-in "
                               "text would join the private gradients; give --general null")
        if self.mixed_precision == "fp16":
            raise UnlearnError("--dp-epsilon does not run with --mixed-precision fp16 (its loss "
                               "scaling would scale the clipping bound); use bf16 or no")
        if self.gradient_checkpointing:
            raise UnlearnError("--dp-epsilon does not run with --gradient-checkpointing "
                               "(Opacus' per-record gradients miss the recomputed blocks)")


def name_list(value: str | list[str]) -> list[str]:
    """A comma list ("a,b") or a list of names as a list of names, blanks and repeats dropped."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return list(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


def check_what_trains(s: UnlearnConfig | FinetuneSettings) -> None:
    """LoRA adapters or the last blocks train, not both; the adapted modules need LoRA."""
    s.lora_target_modules = name_list(s.lora_target_modules)
    if s.lora_rank is not None and s.trainable_layers is not None:
        raise UnlearnError("give either --lora-rank (adapters train) or --trainable-layers (the "
                           "last blocks train), not both")
    if s.lora_rank is None and s.lora_target_modules:
        raise UnlearnError("--lora-target-modules applies to LoRA runs only: give --lora-rank R "
                           "too")


# --- command-line flags from the fields ---------------------------------------------------------


def add_flags(parser: argparse.ArgumentParser, cls: type[Settings]) -> None:
    """``--config`` and one flag per field of ``cls``. Every flag's default is suppressed, so only
    the flags given override the YAML file and the defaults (see :func:`settings_from_args`)."""
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="YAML file of settings, keys as the flags' names (flags override it)")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        flag = "--" + (f.metadata.get("flag") or _flag_name(f.name))
        parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS,
                            help=_help(f, f.name in cls.required), **_flag_kind(f))


def _flag_kind(f: dataclasses.Field) -> dict[str, Any]:
    kind = str(f.type)
    if kind == "bool":
        return {"action": argparse.BooleanOptionalAction}
    if kind.startswith("dict"):
        return {"action": "append", "type": _key_value, "metavar": "KEY=VALUE"}
    if kind.startswith("list[float]"):
        return {"nargs": "+", "type": float, "metavar": "X"}
    scalar = kind.split("|")[0].strip()
    if scalar in ("int", "float"):
        number = int if scalar == "int" else float
        return {"type": _or_null(number) if "None" in kind else number,
                "metavar": "N" if number is int else "X"}
    choices = f.metadata.get("choices")
    allowed = choices() if callable(choices) else choices
    return {"metavar": "{" + ",".join(allowed) + "}"} if allowed else {}


def _help(f: dataclasses.Field, required: bool) -> str:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if required:
        shown = "required"
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, list):
        shown = ",".join(str(x) for x in default)
    elif isinstance(default, dict):
        shown = ", ".join(f"{k}={v}" for k, v in default.items()) or "none"
    else:
        shown = "null" if default is None else default
    text = f"{f.metadata.get('help', '')} ({shown if required else f'default: {shown}'})"
    return text.replace("%", "%%")


def _or_null(number: type) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        return None if value.lower() in NULL_WORDS else number(value)

    parse.__name__ = number.__name__  # argparse names the type in its error message
    return parse


def _key_value(value: str) -> tuple[str, float]:
    name, sep, weight = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT, got '{value}'")
    return name.strip(), float(weight)


def settings_from_args(cls: type[S], args: argparse.Namespace) -> S:
    """The settings of one command: defaults, then ``--config``, then the flags given."""
    flags: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            flags[f.name] = dict(value) if str(f.type).startswith("dict") else value
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    settings = _build(cls, {**values, **flags})
    settings.require()
    return settings


def _build(cls: type[S], values: dict[str, Any]) -> S:
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"`unlearnlm {cls.command} --help`" if cls.command else cls.__name__
        raise UnlearnError(f"unknown setting(s) {', '.join(unknown)}; see {where}")
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
