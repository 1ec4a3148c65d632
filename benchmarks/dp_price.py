"""The price of DP-SGD on the demo's records: fields leaked, membership-inference AUC and
WikiText perplexity after LoRA fine-tuning without DP and at each epsilon, same epochs.

usage: OMP_NUM_THREADS=1 python benchmarks/dp_price.py --out runs/dp_price \
           [--epsilons 8,1] [--epochs 15] [--lr 2e-3] [--lora-rank 16] [--no-base]

The records are the demo's (``unlearnlm demo``'s seed 0: 8 to forget and 16 to keep, trained
together, and 16 strangers never trained on). Every model is the base model fine-tuned on the
24 records with LoRA (``unlearnlm finetune --lora-rank R --merge ...``, plus ``--dp-epsilon E``
for a DP row) for the same number of epochs, no early stop, no mixed-in Wikipedia text (DP-SGD
refuses it); each is cached (``train.finetune.cached_finetune``), so a second run only measures.
Per model: private fields (phone, email, address, ID) in the greedy continuation of each trained
record's opening, of 96; the AUC of the true text's NLL separating the 24 trained records from
the 16 strangers (0.5: no better than chance); WikiText perplexity (8 documents, 256 tokens);
the epsilon spent and the noise multiplier. Writes ``results.json`` and ``table.md`` in --out.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from unlearnlm.demo import DemoSettings, fluency, leak_share, make_data, probe, true_text_nll
from unlearnlm.evaluate.privacy import auc
from unlearnlm.lm.loading import load_model
from unlearnlm.rundir import write_json, write_text_atomic
from unlearnlm.train.finetune import cached_finetune

ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
HEADER = ("| model | epsilon spent (target) | noise multiplier | suffix token accuracy | "
          "fields leaked (greedy, of 96) | MIA AUC (NLL, trained vs strangers) | "
          "WikiText PPL | fine-tuning s |")


def measure(model, tokenizer, sets: dict, s: DemoSettings) -> dict:
    model.eval()
    with torch.no_grad():
        rows = probe(model, tokenizer, sets["train"], s, sets["train"])
        trained = true_text_nll(model, tokenizer, sets["train"])
        strangers = true_text_nll(model, tokenizer, sets["strangers"])
        ppl = fluency(model, tokenizer, s).get("wikitext_ppl")
    leaked, total = leak_share(rows)
    return {"fields_leaked": leaked, "fields": total, "wikitext_ppl": ppl,
            "mia_auc": auc(trained, strangers, higher_is_member=False)}


def row(name: str, r: dict) -> str:
    dp = r.get("dp")
    spent = f"{dp['epsilon_spent']:.2f} ({dp['target_epsilon']:g})" if dp else "-"
    noise = f"{dp['noise_multiplier']:.2f}" if dp else "-"
    acc = f"{r['suffix_accuracy']:.3f}" if "suffix_accuracy" in r else "-"
    secs = f"{r['seconds']:.0f}" if "seconds" in r else "-"
    return (f"| {name} | {spent} | {noise} | {acc} | {r['fields_leaked']} | "
            f"{r['mia_auc']:.2f} | {r['wikitext_ppl']:.1f} | {secs} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--epsilons", default="8,1", help="comma list of target epsilons")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-target-modules", default=ALL_LINEAR)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--base", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the base model")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    s = DemoSettings()
    sets = make_data(out, s)
    train = out / "data" / "train.jsonl"
    common = dict(max_epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                  target_accuracy=None, prefix_tokens=50, suffix_tokens=None, seed=s.seed,
                  lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank,
                  lora_target_modules=args.lora_target_modules, merge=True, progress=False)
    results: dict[str, dict] = {}
    if args.base:
        model, tokenizer, _ = load_model(s.model)
        results["base model"] = measure(model, tokenizer, sets, s)
        print(row("base model", results["base model"]), flush=True)
    runs = [("no DP", None)] + [(f"DP epsilon {float(e):g}", float(e))
                                for e in args.epsilons.split(",") if e.strip()]
    for name, epsilon in runs:
        clock = time.perf_counter()
        dp = {} if epsilon is None else dict(dp_epsilon=epsilon, dp_delta=args.delta,
                                             dp_max_grad_norm=args.max_grad_norm)
        folder, record = cached_finetune(s.model, train, "dp-price", say=print, **common, **dp)
        model, tokenizer, _ = load_model(str(folder))
        results[name] = {**measure(model, tokenizer, sets, s), "folder": str(folder),
                         "suffix_accuracy": record["suffix_accuracy"],
                         "seconds": record["seconds"], "dp": record.get("dp"),
                         "wall_s": round(time.perf_counter() - clock, 1)}
        print(row(name, results[name]), flush=True)
    write_json(out / "results.json", {"settings": vars(args), "results": results})
    table = "\n".join([HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
                      + [row(n, r) for n, r in results.items()])
    write_text_atomic(out / "table.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
