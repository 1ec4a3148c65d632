"""``AuditSettings``: everything ``unlearnlm audit`` needs, checked before a model loads."""

from __future__ import annotations

from dataclasses import dataclass

from unlearnlm.errors import UnlearnError
from unlearnlm.settings import Settings, setting, shared

# name -> what the attack does; the order is the order of the report's table
ATTACKS: dict[str, str] = {
    "relearn-unrelated": "fine-tuning steps on unrelated general text (Wikipedia paragraphs)",
    "relearn-related": "fine-tuning steps on texts of the same kind that are not in the forget "
                       "set (--related)",
    "relearn-half": "fine-tuning steps on one half of the forget set, scored on the other half",
    "int8": "8-bit weights (round to nearest, one scale per output row)",
    "int4": "4-bit weights (round to nearest, a scale and a zero point per group of inputs)",
    "sample": "k sampled continuations (temperature 1) per text",
    "beam": "beam-search continuations",
    "short-prompt": "greedy continuations from the opening words cut short",
    "question": "greedy answers to a question about the text instead of its opening words",
}
RELEARN_ATTACKS = ("relearn-unrelated", "relearn-related", "relearn-half")
QUANT_ATTACKS = {"int8": 8, "int4": 4}
WEIGHT_ATTACKS = (*RELEARN_ATTACKS, *QUANT_ATTACKS)


def attack_names(value: str | None, *, related: bool, forget_count: int | None) -> list[str]:
    """The attacks a comma list names, checked; None: every attack the inputs allow (without
    related texts no ``relearn-related``; with one forget text no ``relearn-half``)."""
    if value is None:
        names = [n for n in ATTACKS if (related or n != "relearn-related")
                 and (forget_count is None or forget_count > 1 or n != "relearn-half")]
        return names
    names = list(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        problem = f"unknown attack '{unknown[0]}'" if unknown else "no attack given"
        raise UnlearnError(f"{problem}; known attacks: {', '.join(ATTACKS)}")
    if "relearn-related" in names and not related:
        raise UnlearnError("the attack relearn-related needs texts of the same kind as the forget "
                           "set; give --related FILE or leave relearn-related out of --attacks")
    if "relearn-half" in names and forget_count is not None and forget_count < 2:
        raise UnlearnError("the attack relearn-half trains on half of the forget set and scores "
                           "the other half; give 2 or more forget texts or leave it out")
    return names


@dataclass
class AuditSettings(Settings):
    """The model to audit, its forget set, the attacks and their strength; ``audit.json``
    records all of it."""

    command = "audit"
    required = ("model", "forget", "out")

    model: str = shared("model", help="the unlearned model to audit (directory, hub id, .gguf "
                        "or smollm2-135m)")
    forget: str = setting("", "the forgotten texts (.jsonl, .csv, .txt)")
    out: str = setting("", "output directory: audit.json, audit.md, audit.html")
    original: str | None = setting(
        None, "the model before unlearning: every attack runs on it too, so that each line reads "
        "before unlearning / after / after the attack")
    reuse_original: str | None = setting(
        None, "the audit.json of an earlier audit of the same --original on the same texts with "
        "the same settings: its scores of the original are reused instead of attacking it again")
    related: str | None = setting(
        None, "texts of the same kind as the forget set that are not in it (other people's "
        "records, other documents of the corpus), for relearn-related")
    unrelated: str | None = setting(
        None, "general text for relearn-unrelated; null: Wikipedia paragraphs of the data folder")
    nonmember: str | None = setting(
        None, "texts of the same kind the model never saw: the yardstick of every attack and "
        "the membership-inference non-members; null: the extraction benchmark's val split")
    nonmember_limit: int | None = setting(32, "at most this many never-seen texts; null: all",
                                          positive=True)
    attacks: str | None = setting(
        None, f"comma-separated attacks: {', '.join(ATTACKS)}; null: all (relearn-related only "
        "with --related)")
    relearn_steps: int = setting(10, "fine-tuning steps of each relearning attack", positive=True)
    relearn_lr: float = setting(1e-4, "learning rate of the relearning attacks (AdamW, every "
                                "parameter)", positive=True)
    relearn_batch_size: int = setting(4, "texts per relearning step", positive=True)
    relearn_tokens: int = setting(128, "relearning texts are cut to this many tokens",
                                  positive=True)
    group_size: int = setting(
        128, "int4: inputs that share one scale and zero point (a layer whose input width it "
        "does not divide: the largest divisor of the width below it)", positive=True)
    samples: int = setting(5, "sample: continuations per text", positive=True)
    temperature: float = setting(1.0, "sample: sampling temperature", positive=True)
    num_beams: int = setting(4, "beam: beams", positive=True)
    short_share: float = setting(
        0.5, "short-prompt: the share of the opening words kept (at least one token)",
        interval="(0, 1)")
    answer_tokens: int = setting(32, "question: tokens generated for each answer", positive=True)
    yardstick_quantile: float = setting(
        0.9, "a forget text scores like never-seen text under an attack when none of its scores "
        "passes this quantile of the never-seen texts' scores under the same attack by more "
        "than --yardstick-margin", interval="(0, 1]")
    yardstick_margin: float = setting(0.05, "see --yardstick-quantile (scores on a 0..1 scale)",
                                      interval="[0, 1]")
    el: bool = setting(True, "score EL_n (the costliest metric: greedy continuations from every "
                       "position); off: MA, BLEU, MIA and leaked fields only")
    el_n: int = shared("el_n")
    prefix_tokens: int = shared("prefix_tokens")
    suffix_tokens: int | None = shared("suffix_tokens")
    seed: int = shared("seed", 0, "seed of sampling, relearning batches and the forget-set halves")
    overwrite: bool = shared("overwrite")

    def check(self) -> None:
        attack_names(self.attacks, related=bool(self.related), forget_count=None)
