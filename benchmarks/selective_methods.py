"""Run unlearning methods on the demo's records and print one table row per method.

usage: python benchmarks/selective_methods.py --out runs/selective \
           [--run relabel] [--run ga:1e-4] [--run relabel:1e-4:retain_kl=5] ...

Each ``--run`` is METHOD[:LR[:TERM=WEIGHT,...]]; every run is the whole ``unlearnlm demo`` (the
leaky model is built once and then reused from the cache) in its own folder under ``--out``, so
a run is also one command: ``unlearnlm demo --method METHOD --unlearn-lr LR --out DIR``. The
table has what decides whether forgetting was selective: forget fields leaking (greedy and
sampled), the kept records' share of leaks, forgotten records still shaped like records, other
people's fields in them, the true text's NLL against strangers', the MIA AUC, WikiText
perplexity and the wall time of the unlearning step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unlearnlm.demo import DemoSettings, run_demo
from unlearnlm.rundir import write_text_atomic

HEADER = ("| method | lr | forget leaked | sampled leaks | kept share | shape kept | other fields "
          "(forgot / strangers) | NLL forgot / strangers | MIA AUC | WikiText PPL base / leaky / "
          "after | epochs | unlearn s |")


def parse_run(text: str) -> tuple[str, float | None, dict[str, float]]:
    method, _, rest = text.partition(":")
    lr_text, _, weights_text = rest.partition(":")
    weights = {}
    for item in filter(None, weights_text.split(",")):
        name, _, value = item.partition("=")
        weights[name] = float(value)
    return method, float(lr_text) if lr_text else None, weights


def row(summary: dict) -> str:
    s = summary["settings"]
    lr = s["unlearn_lr"] if s["unlearn_lr"] is not None else "default"
    weights = ",".join(f"{k}={v:g}" for k, v in summary.get("loss_weights", {}).items())
    name = s["method"] + (f" ({weights})" if weights else "")
    return (f"| {name} | {lr} | {summary['forget_leaked_after']}/{summary['fields_forget']} | "
            f"{summary['forget_leaked_sampled']}/{summary['forget_sampled_fields']} | "
            f"{summary['keep_kept_share']:.0%} | {summary['forget_shape_kept']}/{s['forget']} | "
            f"{summary['forget_other_fields']} / {summary['stranger_other_fields']} | "
            f"{summary['forget_nll_after']:.2f} / {summary['stranger_nll_median']:.2f} | "
            f"{summary['forget_mia_auc']:.2f} | {summary['wikitext_ppl_base']:.1f} / "
            f"{summary['wikitext_ppl_before']:.1f} / {summary['wikitext_ppl_after']:.1f} | "
            f"{summary['unlearn_epochs']} | {summary['timings_s']['unlearn']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for one sub-folder per run")
    parser.add_argument("--run", action="append", default=[], help="METHOD[:LR[:TERM=W,...]]")
    args = parser.parse_args()
    rows = []
    for i, spec in enumerate(args.run or ["relabel"]):
        method, lr, weights = parse_run(spec)
        settings = DemoSettings(method=method, unlearn_lr=lr, loss_weights=weights)
        summary = run_demo(Path(args.out) / f"{i:02d}-{method}", settings)
        summary["loss_weights"] = weights
        rows.append(row(summary))
        print("\n".join([HEADER, "|---" * 12 + "|", *rows]), flush=True)
    write_text_atomic(Path(args.out) / "table.md",
                      "\n".join([HEADER, "|---" * 12 + "|", *rows]) + "\n")
    print(json.dumps({"table": str(Path(args.out) / "table.md")}))


if __name__ == "__main__":
    main()
