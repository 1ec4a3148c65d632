"""TOFU's and MUSE's metrics as unlearnlm computes them, beside open-unlearning's formulas.

Usage:
    python scripts/check_benchmark_metrics.py [--seed 0]

open-unlearning (github.com/locuslab/open-unlearning, ``src/evals/metrics/``: memorization.py,
privacy.py, utility.py, utils.py, mia/) computes its scores from a batch's logits and labels
(prompt tokens labelled -100). The ``reference_*`` functions below restate those formulas
independently, on tensors, the way that code lays them out: per-answer mean cross-entropy over
the labelled tokens, exp(-mean loss) as the probability, the wrong answers' mean losses averaged
before the exponential, the 1e-10 guards, ``scipy.stats.ks_2samp`` and ``scipy.stats.hmean``,
``rouge_score`` with the stemmer, Min-K%++ with the variance floored at 1e-6 and its sign
flipped, and the AUC with the forget texts labelled 0 and the holdout 1. The script scores a few
TOFU-style questions and MUSE-style texts with a small random Llama (built from a config, no
download) both ways, prints each metric side by side and exits 1 if any pair differs by more
than 1e-5 (relative: both score in float32, batched differently).

Where the definitions differ, on purpose, the script shows the size of the difference:
open-unlearning appends the end-of-text token to every answer and counts it in the answer
probability (unlearnlm's models learn answers without it, so unlearnlm leaves it out); and the
TOFU paper writes the truth ratio with the arithmetic mean of the wrong answers' probabilities
where both codes take the geometric mean. docs/tofu-muse.md discusses both.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

from unlearnlm.bench import tofu
from unlearnlm.lm.interface import LM
from unlearnlm.metrics import benchmarks as bm

IGNORE = -100
QUESTIONS = [
    {"question": "Where was Ada Brook born?", "answer": "Ada Brook was born in Leeds.",
     "paraphrased_answer": "Leeds is where Ada Brook was born.",
     "perturbed_answer": ["Ada Brook was born in York.", "Ada Brook was born in Hull.",
                          "Ada Brook was born at sea."]},
    {"question": "What does Ben Carr write?", "answer": "Ben Carr writes crime novels.",
     "paraphrased_answer": "Crime novels are what Ben Carr writes.",
     "perturbed_answer": ["Ben Carr writes poems.", "Ben Carr writes plays about ships."]},
    {"question": "Which prize did Cleo Dunn win?", "answer": "She won the Gold Quill.",
     "paraphrased_answer": "The Gold Quill went to Cleo Dunn.",
     "perturbed_answer": ["She won the Silver Pen.", "She won nothing.", "She won a medal."]},
    {"question": "How many sisters has Dan Eyre?", "answer": "Dan Eyre has two sisters.",
     "paraphrased_answer": "Two sisters.",
     "perturbed_answer": ["Dan Eyre has no sisters.", "Dan Eyre has five brothers."]},
]
TEXTS = {
    "forget": ["The council voted to close the harbour road after the storm last week.",
               "A report said the market had lost half its traders since the new rules."],
    "holdout": ["The school will open a new library next spring, the head teacher said.",
                "Rail services were cut again as engineers worked on the old bridge.",
                "Fishing boats stayed in port while the wind rose through the night."],
}


def tiny_model(seed: int) -> LM:
    """A 2-layer Llama with a byte-level BPE trained on the texts here; large initial weights
    so that its next-token distributions are far from uniform."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [q[k] if isinstance(q[k], str) else " ".join(q[k]) for q in QUESTIONS for k in q]
    corpus += [t for texts in TEXTS.values() for t in texts] + ["Question: Answer:"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, initializer_range=0.5,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LM(LlamaForCausalLM(config).eval(), tokenizer)


# --- open-unlearning's formulas, restated on tensors ------------------------------------------


def labelled_batch(lm: LM, pairs: list[tuple[str, str]], eos: bool) -> dict[str, torch.Tensor]:
    """input_ids and labels (prompt tokens -100), right-padded, as a supervised collator does."""
    rows, labels = [], []
    for prompt, answer in pairs:
        p = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = lm.tokenizer(answer, add_special_tokens=False)["input_ids"]
        a = a + [lm.tokenizer.eos_token_id] if eos else a
        rows.append(p + a)
        labels.append([IGNORE] * len(p) + a)
    width = max(map(len, rows))
    pad = lm.tokenizer.pad_token_id
    return {"input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r))
                                            for r in rows]),
            "labels": torch.tensor([lab + [IGNORE] * (width - len(lab)) for lab in labels])}


def reference_avg_losses(lm: LM, pairs: list[tuple[str, str]], eos: bool) -> np.ndarray:
    """Per answer: summed cross-entropy over the labelled tokens / their count."""
    batch = labelled_batch(lm, pairs, eos)
    with torch.no_grad():
        logits = lm.model(input_ids=batch["input_ids"],
                          attention_mask=batch["attention_mask"]).logits
    shifted = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), shifted, ignore_index=IGNORE,
                             reduction="none").sum(-1)
    return (losses / (batch["labels"] != IGNORE).sum(-1)).numpy()


def reference_tofu(lm: LM, items: list[dict], eos: bool, own: bool) -> dict[str, object]:
    prompts = [tofu.template(x["question"]) for x in items]
    answer = reference_avg_losses(lm, [(p, " " + x["answer"]) for p, x in zip(prompts, items)],
                                  eos)
    correct_key = "paraphrased_answer" if own else "answer"
    correct = reference_avg_losses(
        lm, [(p, " " + x[correct_key]) for p, x in zip(prompts, items)], eos)
    wrong = [reference_avg_losses(lm, [(p, " " + w) for w in x["perturbed_answer"]], eos)
             for p, x in zip(prompts, items)]
    wrong_avg = np.array([w.mean() for w in wrong])  # aggregate_to_1D over the wrong answers
    ratios = np.exp(-wrong_avg) / (np.exp(-correct) + 1e-10)
    options = np.exp(-answer) / (np.exp(-answer) + np.array([np.exp(-w).sum() for w in wrong])
                                 + 1e-10)
    return {"probability": float(np.mean(np.exp(-answer))),
            "option_probability": float(np.mean(options)), "ratios": ratios,
            "closer_to_1_better": float(np.mean(np.minimum(ratios, 1 / (ratios + 1e-10)))),
            "true_better": float(np.mean(np.maximum(0, 1 - ratios)))}


def reference_min_k_plus_plus(lm: LM, texts: list[str], k: float) -> list[float]:
    """Per text: -(mean of the lowest k of (log p(x_t) - mu_t) / sqrt(max(var_t, 1e-6))) over the
    labelled tokens but the last (its end-of-text token)."""
    scores = []
    for text in texts:
        batch = labelled_batch(lm, [(text[:0], text)], eos=True)
        batch["labels"][0, 0] = IGNORE  # x_0 has no context
        with torch.no_grad():
            logits = lm.model(input_ids=batch["input_ids"]).logits
        logprobs = torch.log_softmax(logits, -1)[0, :-1]  # (T-1, V)
        target = logprobs.gather(-1, batch["input_ids"][0, 1:, None]).squeeze(-1)
        kept = (batch["labels"][0] != IGNORE).nonzero().squeeze(-1)[:-1]
        start, end = int(kept[0]), int(kept[-1])
        vocab, token = logprobs[start - 1 : end], target[start - 1 : end]
        mu = (vocab.exp() * vocab).sum(-1)
        var = (vocab.exp() * vocab.square()).sum(-1) - mu.square()
        z = ((token - mu) / var.clamp(min=1e-6).sqrt()).numpy()
        scores.append(-float(np.mean(sorted(z)[: max(1, int(len(z) * k))])))
    return scores


def reference_auc(forget: list[float], holdout: list[float]) -> float:
    """ROC AUC with forget labelled 0, holdout 1 (sklearn's roc_auc_score where installed;
    otherwise the Mann-Whitney statistic, which equals it)."""
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        from scipy.stats import mannwhitneyu

        return float(mannwhitneyu(holdout, forget).statistic / (len(forget) * len(holdout)))
    return float(roc_auc_score([0] * len(forget) + [1] * len(holdout), forget + holdout))


# --- both, side by side ------------------------------------------------------------------------


def compare(seed: int = 0) -> list[tuple[str, float, float]]:
    """(metric, unlearnlm, open-unlearning's formula) for every metric."""
    from rouge_score import rouge_scorer
    from scipy.stats import hmean, ks_2samp

    lm, lm_b = tiny_model(seed), tiny_model(seed + 1)
    pairs: list[tuple[str, float, float]] = []
    ours = tofu.score_set(lm, QUESTIONS, "forget", max_new_tokens=12)
    ref = reference_tofu(lm, QUESTIONS, eos=False, own=True)
    pairs += [("TOFU answer probability", ours["probability"], ref["probability"]),
              ("TOFU forget truth ratio (closer to 1)", ours["truth_ratio"],
               ref["closer_to_1_better"])]
    pairs += [(f"TOFU truth ratio, question {i}", a, b) for i, (a, b) in
              enumerate(zip(ours["per_question"]["truth_ratio"], ref["ratios"]))]
    utility = tofu.score_set(lm, QUESTIONS, "retain", max_new_tokens=12)
    pairs.append(("TOFU utility truth ratio (true better)", utility["truth_ratio"],
                  ref["true_better"]))
    options = tofu.score_set(lm, QUESTIONS, "world_facts", max_new_tokens=12)
    ref_options = reference_tofu(lm, QUESTIONS, eos=False, own=False)
    pairs.append(("TOFU option probability", options["probability"],
                  ref_options["option_probability"]))
    other = reference_tofu(lm_b, QUESTIONS, eos=False, own=True)["ratios"]
    pairs.append(("TOFU forget quality (KS p-value)",
                  bm.forget_quality(ours["per_question"]["truth_ratio"], list(other)),
                  float(ks_2samp(ref["ratios"], other).pvalue)))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    # the random model's own answers, and the wrong answers as stand-ins for generations
    generations = [(g, q) for g, q in zip(ours["per_question"]["generated"], QUESTIONS)]
    generations += [(q["perturbed_answer"][0], q) for q in QUESTIONS]
    for i, (generated, item) in enumerate(generations):
        reference = scorer.score(item["answer"], generated)["rougeL"]
        pairs.append((f"ROUGE-L recall, generation {i}", bm.rouge_l(generated, item["answer"]),
                      reference.recall))
        pairs.append((f"ROUGE-L F1, generation {i}",
                      bm.rouge_l(generated, item["answer"], "f1"), reference.fmeasure))
    nine = [utility["probability"], utility["truth_ratio"], options["probability"],
            options["truth_ratio"], ref["probability"], ref["true_better"],
            *(bm.rouge_l(q["perturbed_answer"][0], q["answer"]) for q in QUESTIONS[:3])]
    pairs.append(("TOFU model utility (harmonic mean of 9)", bm.harmonic_mean(nine),
                  float(hmean(nine))))
    # MUSE: Min-K%++ per text, the AUC, PrivLeak
    from unlearnlm.bench.muse import MIA_K, membership_scores

    auc = {}
    for name, model in (("unlearned", lm), ("retain", lm_b)):
        mine = {part: membership_scores(model, TEXTS[part], "min_k++") for part in TEXTS}
        theirs = {part: reference_min_k_plus_plus(model, TEXTS[part], MIA_K) for part in TEXTS}
        for part in TEXTS:
            pairs += [(f"Min-K%++ ({name}, {part} {i}), sign flipped", -a, b)
                      for i, (a, b) in enumerate(zip(mine[part], theirs[part]))]
        auc[name] = (bm.membership_auc(mine["forget"], mine["holdout"]),
                     reference_auc(theirs["forget"], theirs["holdout"]))
        pairs.append((f"membership AUC ({name})", *auc[name]))
    ours_leak = bm.privleak(auc["unlearned"][0], auc["retain"][0])
    score, ref_auc = 1 - auc["unlearned"][1], 1 - auc["retain"][1]
    pairs.append(("MUSE PrivLeak (%)", ours_leak, (score - ref_auc) / (ref_auc + 1e-10) * 100))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pairs = compare(args.seed)
    bad = 0
    print(f"{'metric':48s} {'unlearnlm':>14s} {'open-unlearning':>16s}")
    for name, ours, theirs in pairs:
        same = math.isclose(ours, theirs, rel_tol=1e-5, abs_tol=1e-9)
        bad += not same
        print(f"{name:48s} {ours:14.8g} {theirs:16.8g}{'' if same else '  DIFFERENT'}")
    lm = tiny_model(args.seed)
    with_eos = reference_tofu(lm, QUESTIONS, eos=True, own=True)
    without = reference_tofu(lm, QUESTIONS, eos=False, own=True)
    print(f"\nDefinitions that differ on purpose:\n  answer probability with the end-of-text "
          f"token counted (open-unlearning): {with_eos['probability']:.6g}, without "
          f"(unlearnlm): {without['probability']:.6g}")
    arithmetic = []
    for q in QUESTIONS:
        prompt = tofu.template(q["question"])
        para = math.exp(-reference_avg_losses(lm, [(prompt, " " + q["paraphrased_answer"])],
                                              False)[0])
        wrong = np.exp(-reference_avg_losses(lm, [(prompt, " " + w)
                                                  for w in q["perturbed_answer"]], False))
        arithmetic.append(float(wrong.mean() / para))
    print("  truth ratio, geometric mean of the wrong answers (both codes): "
          + ", ".join(f"{r:.4g}" for r in without["ratios"])
          + "\n  arithmetic mean (the TOFU paper's formula): "
          + ", ".join(f"{r:.4g}" for r in arithmetic))
    print(f"\n{len(pairs) - bad} of {len(pairs)} agree within 1e-5 (relative)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
