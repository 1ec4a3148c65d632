"""Compare two quantisation libraries on SmolLM2-135M on the CPU: torchao and optimum-quanto.

For 8-bit and 4-bit weights (all linear layers but the output head): the seconds to quantise,
a forward pass (8 texts of 40 tokens) and 20 greedy tokens for those 8 prompts, whether the
forward pass runs under ``torch.inference_mode`` (every scorer of this package uses it), the
largest distinct-value count in a group of 128 inputs of the first MLP's down projection
(1536 inputs, so groups of 128 for torchao here), the largest logit change
against float32, and WikiText perplexity (the first 8 documents, 256 tokens each).

Usage: .venv/bin/python benchmarks/quant_libraries.py [--json OUT]
(optimum-quanto comes with the dev extra; the audit itself uses torchao only.)
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time

import torch

from unlearnlm.data.eval_sets import corpus_texts
from unlearnlm.lm.loading import load_model
from unlearnlm.metrics.scores import perplexity
from unlearnlm.rundir import write_json

PROMPTS = ["The history of the city begins", "Personal record of John Smith. Born 3 May 1970.",
           "Water boils at a temperature of", "The best way to learn a new language is",
           "In 1969, the first astronauts", "A healthy breakfast usually includes",
           "The capital of France is", "Machine learning models can"]


def torchao_quantise(model, bits: int):
    from unlearnlm.audit.attacks import quantised

    return quantised(model, bits, group_size=128)  # already dequantised: plain float weights


def quanto_quantise(model, bits: int):
    from optimum.quanto import freeze, qint4, qint8, quantize

    quantize(model, weights=qint8 if bits == 8 else qint4, exclude=["lm_head"])
    freeze(model)
    return model


def _weight_values(model) -> torch.Tensor:
    weight = model.model.layers[0].mlp.down_proj.weight
    return weight.dequantize() if hasattr(weight, "dequantize") else weight


def measure(name, quantise, base, tokenizer, bits: int, wikitext) -> dict:
    clock = time.perf_counter()
    model = quantise(copy.deepcopy(base), bits)
    row = {"library": name, "bits": bits, "quantise_s": time.perf_counter() - clock}
    batch = tokenizer(PROMPTS, return_tensors="pt", padding="max_length", max_length=40,
                      truncation=True)
    try:
        with torch.inference_mode():
            model(**batch)
        row["inference_mode"] = True
    except RuntimeError as err:
        row["inference_mode"] = f"fails: {str(err)[:60]}"
    with torch.no_grad():
        clock = time.perf_counter()
        logits = model(**batch).logits
        row["forward_s"] = time.perf_counter() - clock
        real = batch["attention_mask"].bool()  # (B, L): padded positions left out
        row["max_logit_change"] = float((logits - base(**batch).logits)[real].abs().max())
        clock = time.perf_counter()
        model.generate(**batch, max_new_tokens=20, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
        row["generate_s"] = time.perf_counter() - clock
        values = _weight_values(model)
        row["distinct_per_group"] = max(len(torch.unique(g)) for g in values.reshape(-1, 128))
        row["wikitext_ppl"] = (perplexity(model, wikitext) if row["inference_mode"] is True
                               else _perplexity_no_grad(model, wikitext))
    return row


def _perplexity_no_grad(model, sequences: list[list[int]]) -> float:
    """Corpus perplexity one sequence at a time under ``no_grad`` (the package's scorers use
    ``inference_mode``, which a model that fails under it cannot run)."""
    total, count = 0.0, 0
    for ids in sequences:
        tensor = torch.tensor([ids])
        logits = model(input_ids=tensor).logits[0, :-1].float()  # (T-1, V)
        total += float(torch.nn.functional.cross_entropy(logits, tensor[0, 1:], reduction="sum"))
        count += len(ids) - 1
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    logging.getLogger("torchao").setLevel(logging.ERROR)
    base, tokenizer, _ = load_model("smollm2-135m")
    base.eval()
    tokenizer.padding_side = "left"
    wikitext = [tokenizer(t, add_special_tokens=False)["input_ids"][:256]
                for t in corpus_texts("wikitext", 8)]
    rows = [{"library": "none (float32)", "bits": 32,
             "wikitext_ppl": perplexity(base, wikitext)}]
    for name, quantise in (("torchao", torchao_quantise), ("optimum-quanto", quanto_quantise)):
        for bits in (8, 4):
            rows.append(measure(name, quantise, base, tokenizer, bits, wikitext))
            print(rows[-1], flush=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| library | bits | quantise s | forward s | 20 tokens s | inference_mode | distinct "
          "values in a group of 128 | max logit change | WikiText PPL |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r.get(k) for k in ("quantise_s", "forward_s", "generate_s", "inference_mode",
                                    "distinct_per_group", "max_logit_change", "wikitext_ppl")]
        print(f"| {r['library']} | {r['bits']} | " + " | ".join(
            f"{c:.2f}" if isinstance(c, float) else "-" if c is None else str(c)
            for c in cells) + " |")
    if args.json:
        write_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
