"""Score the same model and texts with our membership signals and with open-unlearning's own
MIA attacks (loss, zlib, min-k%, min-k%++), and print both side by side.

open-unlearning (Dorna et al. 2025, github.com/locuslab/open-unlearning) is not installed: its
source tree is given with ``--peer`` and its attack classes and ``mia_auc`` are imported from
``src/evals/metrics/mia/`` of that checkout. Only those files and what they import are loaded
(``evals/metrics/utils.py``, ``data/utils.py``); the packages' ``__init__`` files, which pull in
Hydra and the trainers, are skipped. ``omegaconf``, imported by ``utils.py`` for its config
helpers and not used by the attacks, gets an empty stand-in when it is not installed.

Texts: the demo's fictitious records (``data.records``, seed 0): ``--members`` of them (default
24) are members, the next ``--nonmembers`` (default 16) never-seen texts. With ``--memorise`` the
model is first fine-tuned on the members as the demo does (``train.finetune.cached_finetune``,
cached; untimed), so that membership is real. Each text is fed as the tokenizer's end-of-text
token followed by the text's tokens, on both sides: every token of the text then has a context,
open-unlearning's labels are the text's tokens (its label -100 sits on the first position), and
both sides score and decode exactly the same tokens.

What should agree, and what should not:

- ``loss`` (mean NLL) and ``zlib`` (mean NLL / zlib-compressed UTF-8 bytes of the text): equal up
  to float rounding. ``zlib (summed NLL)`` is our former definition, shown for comparison.
- ``min_k`` and ``min_k_plus_plus``: open-unlearning negates them (higher = less likely a member)
  and drops the last target position ("ignore eos prediction"); ours keeps it, as Shi et al. and
  Zhang et al. do. The table shows ours, ours without the last position, and theirs negated back.
- AUCs: ours (``evaluate.privacy.auc``) and theirs (``mia_auc``, sklearn's ``roc_auc_score``).

Usage:
    git clone https://github.com/locuslab/open-unlearning /tmp/open-unlearning
    .venv/bin/python benchmarks/peer_mia_check.py --peer /tmp/open-unlearning [--memorise]
        [--model smollm2-135m] [--members 24] [--nonmembers 16] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

from unlearnlm.data.records import fake_records, write_records
from unlearnlm.data.texts import Sample
from unlearnlm.evaluate.privacy import (
    MIN_K,
    SIGNALS,
    auc,
    lowest_k_mean,
    membership_scores,
    token_scores,
)
from unlearnlm.lm.loading import load_model
from unlearnlm.paths import cache_root
from unlearnlm.rundir import write_json

PEER_ATTACKS = {"loss": "LOSSAttack", "zlib": "ZLIBAttack", "min_k": "MinKProbAttack",
                "min_k_plus_plus": "MinKPlusPlusAttack"}
PEER_MODULES = {"loss": "loss", "zlib": "zlib", "min_k": "min_k",
                "min_k_plus_plus": "min_k_plus_plus"}


def import_peer(root: Path) -> dict:
    """open-unlearning's attack classes and ``mia_auc`` from its source tree (see the module
    docstring for what is skipped)."""
    src = root / "src"
    if not (src / "evals" / "metrics" / "mia" / "zlib.py").is_file():
        sys.exit(f"{root} is not an open-unlearning checkout (no src/evals/metrics/mia/zlib.py)")
    for package, folder in (("evals", src / "evals"), ("evals.metrics", src / "evals/metrics"),
                            ("evals.metrics.mia", src / "evals/metrics/mia"),
                            ("data", src / "data")):
        module = types.ModuleType(package)
        module.__path__ = [str(folder)]
        sys.modules[package] = module
    if importlib.util.find_spec("omegaconf") is None:
        stand_in = types.ModuleType("omegaconf")
        stand_in.OmegaConf = None
        sys.modules["omegaconf"] = stand_in
    found = {name: getattr(importlib.import_module(f"evals.metrics.mia.{PEER_MODULES[name]}"),
                           cls) for name, cls in PEER_ATTACKS.items()}
    found["mia_auc"] = importlib.import_module("evals.metrics.mia.utils").mia_auc
    return found


def record_texts(members: int, nonmembers: int) -> tuple[list[dict], list[dict]]:
    records = fake_records(members + nonmembers, seed=0)
    return records[:members], records[members:]


def as_samples(records: list[dict], tokenizer) -> list[Sample]:
    """Each text as [end-of-text] + its tokens: a one-token prefix, the text as the suffix."""
    start = tokenizer.eos_token_id
    return [Sample(r["id"], r["prefix"] + r["suffix"], [start],
                   tokenizer(r["prefix"] + r["suffix"], add_special_tokens=False)["input_ids"])
            for r in records]


def ours(model, tokenizer, samples: list[Sample]) -> dict[str, list[float]]:
    """Our four signals, our former zlib, and min-k% / min-k%++ without the last position."""
    scores = membership_scores(model, tokenizer, samples)
    per_token = token_scores(model, [s.input_ids for s in samples])
    scores["zlib_summed_nll"] = [value * len(lp) for value, (lp, _) in
                                 zip(scores["zlib"], per_token, strict=True)]
    scores["min_k_drop_last"] = [lowest_k_mean(lp[:-1], MIN_K) for lp, _ in per_token]
    scores["min_k_plus_plus_drop_last"] = [lowest_k_mean(z[:-1], MIN_K) for _, z in per_token]
    return scores


def peer_data(samples: list[Sample]) -> list[dict]:
    rows = []
    for index, sample in enumerate(samples):
        ids = torch.tensor(sample.input_ids)
        labels = ids.clone()
        labels[0] = -100
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                     "labels": labels, "index": torch.tensor(index)})
    return rows


def collate(rows: list[dict]) -> dict:
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def theirs(peer: dict, model, tokenizer, members: list[Sample], others: list[Sample]) -> dict:
    """Per-text scores and the AUC of each attack, from open-unlearning's ``mia_auc``."""
    data = {"forget": peer_data(members), "holdout": peer_data(others)}
    out = {}
    for name in SIGNALS:
        extra = {"tokenizer": tokenizer} if name == "zlib" else (
            {"k": MIN_K} if name.startswith("min_k") else {})
        result = peer["mia_auc"](peer[name], model, data=data, collator=collate, batch_size=1,
                                 **extra)
        scores = [result[side]["value_by_index"][str(i)]["score"]
                  for side, size in (("forget", len(members)), ("holdout", len(others)))
                  for i in range(size)]
        out[name] = {"scores": scores, "auc": result["auc"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", required=True, help="an open-unlearning checkout")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--members", type=int, default=24)
    parser.add_argument("--nonmembers", type=int, default=16)
    parser.add_argument("--memorise", action="store_true",
                        help="fine-tune the model on the members first (as the demo; cached)")
    parser.add_argument("--json", default=None, help="save every per-text score to this file")
    args = parser.parse_args()

    peer = import_peer(Path(args.peer))
    member_records, other_records = record_texts(args.members, args.nonmembers)
    spec = args.model
    if args.memorise:
        from unlearnlm.train.finetune import cached_finetune

        data = write_records(cache_root() / "benchmarks" / f"peer-mia-{args.members}.jsonl",
                             member_records)
        folder, record = cached_finetune(
            args.model, data, "peer-mia", say=print, max_epochs=30, lr=1e-3, batch_size=8,
            target_accuracy=0.99, prefix_tokens=50, suffix_tokens=None, seed=0,
            trainable_layers=10, progress=False)
        print(f"suffix token accuracy {record['suffix_accuracy']:.3f} after "
              f"{len(record['epochs'])} epochs")
        spec = str(folder)
    model, tokenizer, _ = load_model(spec)
    model.eval()
    members, others = as_samples(member_records, tokenizer), as_samples(other_records, tokenizer)
    mine = ours(model, tokenizer, members + others)
    peer_scores = theirs(peer, model, tokenizer, members, others)
    report(args, mine, peer_scores, len(members))


def report(args, mine: dict, peer_scores: dict, members: int) -> None:
    """The side-by-side table: per-signal max |difference| over texts, and the AUCs."""
    def ours_auc(values: list[float], higher: bool) -> float:
        return auc(values[:members], values[members:], higher)

    sign = {"loss": 1.0, "zlib": 1.0, "min_k": -1.0, "min_k_plus_plus": -1.0}
    print(f"\n{args.model}{' (memorised)' if args.memorise else ''}: {members} members, "
          f"{len(mine['loss']) - members} never-seen texts\n")
    print("| signal | ours AUC | theirs AUC | max abs diff, ours vs theirs per text |")
    print("|---|---|---|---|")
    rows = [(name, name, SIGNALS[name]) for name in SIGNALS]
    rows += [("zlib_summed_nll", "zlib", False), ("min_k_drop_last", "min_k", True),
             ("min_k_plus_plus_drop_last", "min_k_plus_plus", True)]
    for key, peer_name, higher in rows:
        theirs_values = [sign[peer_name] * v for v in peer_scores[peer_name]["scores"]]
        diff = max(abs(a - b) for a, b in zip(mine[key], theirs_values, strict=True))
        print(f"| {key} | {ours_auc(mine[key], higher):.4f} | "
              f"{peer_scores[peer_name]['auc']:.4f} | {diff:.3g} |")
    if args.json:
        write_json(args.json, {"ours": mine, "theirs": peer_scores})
        print(f"saved {args.json}")


if __name__ == "__main__":
    main()
