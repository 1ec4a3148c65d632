"""TOFU's and MUSE's scores computed by open-unlearning's own functions and by unlearnlm's
(``metrics.benchmarks``) on the same inputs, side by side.

open-unlearning (Dorna et al. 2025, github.com/locuslab/open-unlearning) is not installed: its
source tree is given with ``--peer``, and its metric functions are imported from
``src/evals/metrics/`` of that checkout: ``utils.py`` (``evaluate_probability``,
``get_forget_quality``), ``memorization.py`` (``truth_ratio``), ``privacy.py`` (``ks_test``,
``privleak``) and ``utility.py`` (``hm_aggregate``). Their registry decorator
(``evals.metrics.base.unlearning_metric``) pulls in Hydra and the data loaders, so a stand-in
that returns each function unchanged takes its place; ``data.utils`` (the label -100) and, when
it is not installed, ``omegaconf`` get stand-ins too. Nothing else of theirs is loaded.

Inputs (seeded): a small random Llama built from a config (no download) scores ``--questions``
question/answer pairs with ``--wrong`` perturbed answers each; each answer's token
log-probabilities come from the model, the prompt's labels are -100 on their side. Both sides
then compute, from the same numbers:

- the answer probability (theirs: ``evaluate_probability`` on the batch; ours:
  ``normalised_probability`` of the answer's token log-probabilities);
- truth ratios and their forget and utility aggregates (``truth_ratio`` with
  ``closer_to_1_better`` and ``true_better``);
- forget quality: ``ks_test`` (the KS test on R, open-unlearning) and ``get_forget_quality`` (the
  test on 1/R, TOFU's released code) against ours, between two models' truth ratios (the same
  model's ratios scaled, so that the test has something to find);
- model utility (``hm_aggregate``), PrivLeak (``privleak``) on a few AUCs.

Prints each pair and exits 1 when any differs by more than 1e-5 (relative).

Usage:
    git clone https://github.com/locuslab/open-unlearning /tmp/open-unlearning
    .venv/bin/python benchmarks/peer_benchmark_check.py --peer /tmp/open-unlearning [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import math
import sys
import types
from pathlib import Path

import torch

from unlearnlm.metrics import benchmarks as ours

IGNORE = -100


def import_peer(root: Path) -> dict:
    """open-unlearning's metric functions from its source tree (module docstring)."""
    src = root / "src"
    if not (src / "evals" / "metrics" / "memorization.py").is_file():
        sys.exit(f"{root} is not an open-unlearning checkout "
                 "(no src/evals/metrics/memorization.py)")
    for package, folder in (("evals", src / "evals"), ("evals.metrics", src / "evals/metrics"),
                            ("data", src / "data")):
        module = types.ModuleType(package)
        module.__path__ = [str(folder)]
        sys.modules[package] = module
    base = types.ModuleType("evals.metrics.base")
    base.unlearning_metric = lambda name: (lambda function: function)
    base.logger = logging.getLogger("peer")
    sys.modules["evals.metrics.base"] = base
    labels = types.ModuleType("data.utils")
    labels.IGNORE_INDEX = IGNORE
    sys.modules["data.utils"] = labels
    if importlib.util.find_spec("omegaconf") is None:
        stand_in = types.ModuleType("omegaconf")
        stand_in.OmegaConf = None
        sys.modules["omegaconf"] = stand_in
    utils = importlib.import_module("evals.metrics.utils")
    return {"evaluate_probability": utils.evaluate_probability,
            "get_forget_quality": utils.get_forget_quality,
            "truth_ratio": importlib.import_module("evals.metrics.memorization").truth_ratio,
            "ks_test": importlib.import_module("evals.metrics.privacy").ks_test,
            "privleak": importlib.import_module("evals.metrics.privacy").privleak,
            "hm_aggregate": importlib.import_module("evals.metrics.utility").hm_aggregate}


def tiny_model(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def scored(model, question: list[int], answer: list[int], peer: dict) -> tuple[list[float], dict]:
    """The answer's token log-probabilities (ours) and open-unlearning's record of the same."""
    ids = torch.tensor([question + answer])
    labels = torch.tensor([[IGNORE] * len(question) + answer])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    theirs = peer["evaluate_probability"](model, batch)[0]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    token_lp = logprobs.gather(1, targets[:, None])[:, 0][len(question) - 1:]
    return token_lp.tolist(), theirs


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", type=Path, required=True, help="open-unlearning checkout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--wrong", type=int, default=3)
    args = parser.parse_args()
    peer = import_peer(args.peer)
    model = tiny_model(args.seed)
    rng = torch.Generator().manual_seed(args.seed)

    def tokens(low: int, high: int) -> list[int]:
        length = int(torch.randint(low, high, (1,), generator=rng))
        return torch.randint(1, 64, (length,), generator=rng).tolist()

    rows: list[tuple[str, float, float]] = []
    correct_lp, wrong_lp, peer_correct, peer_wrong = [], [], {}, {}
    for index in range(args.questions):
        question = tokens(4, 10)
        lp, theirs = scored(model, question, tokens(3, 9), peer)
        rows.append((f"answer probability, question {index}", ours.normalised_probability(lp),
                     theirs["prob"]))
        correct_lp.append(lp)
        peer_correct[index] = theirs
        wrongs = [scored(model, question, tokens(3, 9), peer) for _ in range(args.wrong)]
        wrong_lp.append([w[0] for w in wrongs])
        peer_wrong[index] = {"avg_loss": [w[1]["avg_loss"] for w in wrongs]}

    ratios = [ours.truth_ratio(c, w) for c, w in zip(correct_lp, wrong_lp, strict=True)]
    pre = {"correct": {"value_by_index": peer_correct}, "wrong": {"value_by_index": peer_wrong}}
    forget_tr = peer["truth_ratio"](None, aggregator="closer_to_1_better", pre_compute=pre)
    utility_tr = peer["truth_ratio"](None, aggregator="true_better", pre_compute=pre)
    for index, ratio in enumerate(ratios):
        rows.append((f"truth ratio, question {index}", ratio,
                     float(forget_tr["value_by_index"][index]["score"])))
    rows.append(("truth ratio, forget aggregate", ours.forget_truth_ratio(ratios),
                 float(forget_tr["agg_value"])))
    rows.append(("truth ratio, utility aggregate", ours.utility_truth_ratio(ratios),
                 float(utility_tr["agg_value"])))

    other = [r * (1.02 + 0.03 * (i % 3)) for i, r in enumerate(ratios)]  # a second "model"
    by_index = {"value_by_index": {i: {"score": r} for i, r in enumerate(ratios)}}
    reference = {"retain_model_logs": {"retain": {
        "value_by_index": {i: {"score": r} for i, r in enumerate(other)}}}}
    ks = peer["ks_test"](None, pre_compute={"forget": by_index}, reference_logs=reference)
    rows.append(("forget quality (KS on R, ks_test)", ours.forget_quality(ratios, other),
                 float(ks["agg_value"])))
    import numpy as np

    legacy = peer["get_forget_quality"](np.array(ratios), np.array(other))
    rows.append(("forget quality (KS on 1/R, get_forget_quality)",
                 ours.forget_quality(ratios, other), float(legacy["agg_value"])))

    parts = [0.9, 0.45, 0.3, 0.62, 0.71, 0.5, 0.33, 0.8, 0.4]
    hm = peer["hm_aggregate"](None, pre_compute={str(i): {"agg_value": v}
                                                 for i, v in enumerate(parts)})
    rows.append(("model utility (harmonic mean of 9)", ours.harmonic_mean(parts),
                 float(hm["agg_value"])))
    for unlearned, retain in ((0.9, 0.6), (0.5, 0.55), (0.3, 0.7)):
        # open-unlearning's mia_auc negates the score and swaps the labels, so its AUC is the
        # same number as metrics.benchmarks.membership_auc; privleak then takes 1 - AUC.
        leak = peer["privleak"](None, pre_compute={"forget": {"agg_value": unlearned}},
                                reference_logs={"retain_model_logs": {
                                    "retain": {"agg_value": retain}}})
        rows.append((f"PrivLeak, AUC {unlearned} vs retain {retain}",
                     ours.privleak(unlearned, retain), float(leak["agg_value"])))

    bad = 0
    print(f"{'score':<50} {'unlearnlm':>14} {'open-unlearning':>16}  agree")
    for name, mine, theirs in rows:
        same = close(mine, theirs)
        bad += not same
        print(f"{name:<50} {mine:>14.8g} {theirs:>16.8g}  {'yes' if same else 'NO'}")
    print(f"{len(rows) - bad} of {len(rows)} agree within 1e-5 (relative)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
