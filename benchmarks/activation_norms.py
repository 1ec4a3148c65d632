"""The size of a model's hidden states after each block, which RMU's coefficient c is set against.

RMU (Li et al. 2024, WMDP) pushes one block's activations on the forget text toward c u, u a
random unit vector; c only means something next to the length those activations have anyway.
This prints, per block, the median and the 90th percentile of the per-token L2 norm of the block's
output over ordinary text (the first token of each text, which many models give an outsized norm,
left out), and marks the block RMU steers by default (7/32 of the depth).

Usage: .venv/bin/python benchmarks/activation_norms.py [--model smollm2-135m] [--corpus wikitext]
       [--docs 16] [--tokens 256]
"""

from __future__ import annotations

import argparse

import torch

from unlearnlm.data.eval_sets import corpus_texts
from unlearnlm.lm.loading import load_model


def block_norms(model, tokenizer, texts: list[str], tokens: int) -> list[torch.Tensor]:
    """Per block, the per-token norms of its output over all texts (first tokens left out)."""
    per_block: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            states = model(input_ids=ids[:, :tokens], output_hidden_states=True).hidden_states
            for block, hidden in enumerate(states[1:]):  # entry 0 is the embeddings
                if block == len(per_block):
                    per_block.append([])
                per_block[block].append(hidden[0, 1:].norm(dim=-1))  # (T-1,)
    return [torch.cat(norms) for norms in per_block]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="wikitext", choices=("wikitext", "pile"))
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    model, tokenizer, _ = load_model(args.model)
    model.eval()
    texts = corpus_texts(args.corpus, args.docs)
    norms = block_norms(model, tokenizer, texts, args.tokens)
    steered = 7 * len(norms) // 32
    print(f"{args.model}: {len(norms)} blocks, width {model.config.hidden_size}, {len(texts)} "
          f"{args.corpus} texts, {len(norms[0])} tokens")
    print("block  median  p90")
    for block, values in enumerate(norms):
        mark = "  <- rmu default" if block == steered else ""
        print(f"{block:5d} {values.median().item():7.2f} {values.quantile(0.9).item():6.2f}{mark}")


if __name__ == "__main__":
    main()
