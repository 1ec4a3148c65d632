"""The MUSE-News benchmark (Shi et al. 2024): BBC news to forget, scored six ways (three here).

Data (``<data>/muse_news``, see docs/tofu-muse.md): ``verbmem/forget.json`` (``prompt``/``gt``:
the opening of a forget passage and its true continuation), ``knowmem/forget_qa.json`` and
``knowmem/retain2_qa.json`` (``question``/``answer``) with their few-shot examples
``*_qa_icl.json``, and ``privleak/{forget,retain2,holdout}.json`` (lists of texts).

The offline copy has no raw training corpora, so the target model learns the forget texts (the
privleak forget texts and the VerbMem passages) and the retain texts (privleak retain2), and the
retain model the retain texts alone; texts are cut into ``CHUNK_WORDS``-word pieces (line
breaks become spaces), trained on every token. The holdout texts are never trained on: they
are the membership attack's non-members and the unlearning loop's never-seen calibration texts.

Scores (``metrics.benchmarks``), as open-unlearning computes MUSE's: VerbMem, ROUGE-L F1 of the
greedy continuation (128 tokens) of each forget passage's opening against its true
continuation; KnowMem on forget and retain QA, ROUGE-L F1 of the greedy answer (32 tokens, cut
at a blank line or the next question) after the few-shot examples; PrivLeak, the change of the
Min-K%++ (k = 0.4) membership AUC between forget and holdout texts against the retain model's.
"""

from __future__ import annotations

import json
from typing import Any

from unlearnlm.bench.tofu import data_folder, generate_answers, keep, read_json_items
from unlearnlm.data.texts import Record
from unlearnlm.errors import UnlearnError
from unlearnlm.metrics import benchmarks as bm

CHUNK_WORDS = 70  # training pieces, about 95 tokens of SmolLM2's tokenizer (1.36 a word)
VERBMEM_TOKENS = 128
KNOWMEM_TOKENS = 32
KNOWMEM_STOPS = ("\n\n", "\nQuestion", "Question:")
MIA_K = 0.4
MIA_TOKENS = 2048  # open-unlearning's max_length for MUSE's membership texts


def _texts(path, fetch: str) -> list[str]:
    """A JSON array of strings (privleak's files), read as items with a ``text`` key."""
    if not path.is_file():
        raise UnlearnError(f"{path} is missing; run `unlearnlm data fetch {fetch}` (or set "
                           "UNLEARNLM_DATA to a folder that holds it)")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UnlearnError(f"{path}: not valid JSON (line {error.lineno}: {error.msg}); run "
                           f"`unlearnlm data fetch {fetch}` again") from None
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        raise UnlearnError(f"{path}: expected a non-empty JSON array of texts; run "
                           f"`unlearnlm data fetch {fetch}` again")
    return items


def load(subset: float | None) -> dict[str, list]:
    """MUSE-News's sets, each cut to the same fraction ``subset``."""
    folder = data_folder("muse_news", "muse_news")
    qa = ("question", "answer")
    sets = {
        "verbmem": read_json_items(folder / "verbmem" / "forget.json", ("prompt", "gt"),
                                   "muse_news"),
        "knowmem_forget": read_json_items(folder / "knowmem" / "forget_qa.json", qa, "muse_news"),
        "knowmem_retain": read_json_items(folder / "knowmem" / "retain2_qa.json", qa,
                                          "muse_news"),
        "privleak_forget": _texts(folder / "privleak" / "forget.json", "muse_news"),
        "privleak_retain": _texts(folder / "privleak" / "retain2.json", "muse_news"),
        "privleak_holdout": _texts(folder / "privleak" / "holdout.json", "muse_news"),
    }
    sets = {name: keep(items, subset) for name, items in sets.items()}
    for name in ("forget", "retain"):  # the few-shot examples stay whole
        sets[f"icl_{name}"] = read_json_items(
            folder / "knowmem" / f"{'retain2' if name == 'retain' else name}_qa_icl.json", qa,
            "muse_news")
    return sets


def chunks(texts: list[str], role: str) -> list[Record]:
    """Texts cut into pieces of ``CHUNK_WORDS`` words (about 95 tokens, like the extraction
    benchmark's 100-token samples), each split in half by words into its prefix and suffix:
    fine-tuning trains on every token, unlearning and its scores use the split, whatever the
    tokenizer."""
    records = []
    for t, text in enumerate(texts):
        words = text.split()
        for c in range(0, len(words), CHUNK_WORDS):
            piece = words[c : c + CHUNK_WORDS]
            if len(piece) >= 2:
                half = len(piece) // 2
                prefix, suffix = " ".join(piece[:half]), " " + " ".join(piece[half:])
                records.append(Record(f"{role}-{t}-{c // CHUNK_WORDS}", prefix + suffix, prefix,
                                      suffix))
    return records


def training_sets(sets: dict[str, list]) -> dict[str, list[Record]]:
    """Forget texts (privleak forget + VerbMem passages), retain texts (privleak retain2), the
    holdout as never-seen calibration texts; the target model learns retain + forget."""
    passages = [x["prompt"] + x["gt"] for x in sets["verbmem"]]
    forget = chunks(sets["privleak_forget"] + passages, "forget")
    retain = chunks(sets["privleak_retain"], "retain")
    return {"forget": forget, "retain": retain, "pool": retain,
            "calibration": chunks(sets["privleak_holdout"], "holdout")}


def few_shot_prompt(examples: list[dict], question: str) -> str:
    shots = "".join(f"Question: {x['question']}\nAnswer: {x['answer']}\n\n" for x in examples)
    return f"{shots}Question: {question}\nAnswer:"


def membership_scores(lm, texts: list[str], attack: str) -> list[float]:
    """Min-K%++ (or Min-K%) of each text's tokens, at most ``MIA_TOKENS`` of them (the model's
    context if shorter); higher: more likely a member."""
    score = bm.min_k_plus_plus if attack == "min_k++" else bm.min_k_percent
    width = lm.context_limit(cap=MIA_TOKENS)
    ids = [lm.tokenizer(t, add_special_tokens=False)["input_ids"][:width] for t in texts]
    # one text a batch: a 2,048-token text's logits alone take 0.4 GB at a 49k vocabulary
    return lm.score(ids, lambda _, logits, targets: score(logits, targets, MIA_K), batch_size=1)


def evaluate(lm, sets: dict[str, list], limit: int | None, max_new_tokens: int,
             attack: str) -> dict[str, Any]:
    """One model's VerbMem, KnowMem (forget, retain) and membership AUC, each set cut to its
    first ``limit`` items."""
    verbmem = sets["verbmem"][:limit]
    continued = generate_answers(lm, [x["prompt"] for x in verbmem],
                                 min(VERBMEM_TOKENS, max_new_tokens), stops=())
    result: dict[str, Any] = {"verbmem_forget": _mean(
        [bm.rouge_l(g, x["gt"], "f1") for g, x in zip(continued, verbmem, strict=True)])}
    for name in ("forget", "retain"):
        items = sets[f"knowmem_{name}"][:limit]
        prompts = [few_shot_prompt(sets[f"icl_{name}"], x["question"]) for x in items]
        answers = generate_answers(lm, prompts, min(KNOWMEM_TOKENS, max_new_tokens),
                                   stops=KNOWMEM_STOPS)
        result[f"knowmem_{name}"] = _mean(
            [bm.rouge_l(a, x["answer"], "f1") for a, x in zip(answers, items, strict=True)])
    members = membership_scores(lm, sets["privleak_forget"][:limit], attack)
    nonmembers = membership_scores(lm, sets["privleak_holdout"][:limit], attack)
    result["membership_auc"] = bm.membership_auc(members, nonmembers)
    return result


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarise(evals: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per model; PrivLeak against the retain model's AUC."""
    reference = evals["retain"]["membership_auc"]
    return [{"model": name, "verbmem_forget": r["verbmem_forget"],
             "knowmem_forget": r["knowmem_forget"], "knowmem_retain": r["knowmem_retain"],
             "privleak": bm.privleak(r["membership_auc"], reference),
             "membership_auc": r["membership_auc"]} for name, r in evals.items()]


COLUMNS = (("verbmem_forget", "VerbMem forget", "{:.3f}"),
           ("knowmem_forget", "KnowMem forget", "{:.3f}"),
           ("knowmem_retain", "KnowMem retain", "{:.3f}"),
           ("privleak", "PrivLeak %", "{:.1f}"), ("membership_auc", "MIA AUC", "{:.3f}"))
