"""What caching a fixed prompt saves: a ``PromptedLM`` that re-reads its prompt on every call
against one that reads it once (``lm.composite.PromptedLM``, ``cache_prompt``), side by side in
one process.

The prompt is ``--prompt-tokens`` random token ids (the length of an in-context-unlearning
prompt; random ids cost the same as text); the inputs are ``--inputs`` random sequences of
``--input-tokens`` tokens. Per side, after one warm-up call of each kind:

- ms per scored token: ``targets`` of every input (teacher-forced log-probabilities of tokens
  1..T-1), time divided by the tokens scored;
- ms per generated token: greedy ``generate`` of ``--new-tokens`` tokens (no eos, so every row
  is that long) from the first half of each input, time divided by the tokens generated;
- ms per EL token: ``greedy_to_the_end`` (extraction likelihood's continuations) from every
  8th start of the second half of each input to its end, time divided by the tokens continued.

Each measurement is the median of ``--repeats`` runs. The cached side's one-off cost, reading
the prompt into the cache, is timed apart. Both sides must agree: the largest difference of
their log-probabilities and whether their greedy tokens are equal are printed.

Usage: .venv/bin/python benchmarks/prompt_cache.py [--model tiny|smollm2-135m|SPEC]
       [--prompt-tokens 2000] [--inputs 8] [--input-tokens 64] [--new-tokens 16]
       [--batch-size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from unlearnlm.lm.composite import PromptedLM
from unlearnlm.lm.interface import LM


def tiny_model() -> LM:
    """A 4-layer, 64-wide random Llama with a 512-token vocabulary and room for long prompts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=8192)
    return LM(LlamaForCausalLM(config).eval(), None, pad_token_id=0)


def seconds(call: Callable[[], object], repeats: int) -> tuple[float, object]:
    """The median wall time of ``repeats`` calls and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        clock = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - clock)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny",
                        help="tiny (a random Llama built here) or a --model spec")
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--input-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if min(args.prompt_tokens, args.inputs, args.new_tokens, args.batch_size,
           args.repeats) < 1 or args.input_tokens < 2:
        parser.error("give --input-tokens >= 2 and every other count >= 1")

    if args.model == "tiny":
        lm = tiny_model()
    else:
        from unlearnlm.lm.loading import load_model

        model, tokenizer, _ = load_model(args.model)
        lm = LM(model.eval(), tokenizer)
    vocab = lm.model.config.vocab_size
    draw = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, vocab, (args.prompt_tokens,), generator=draw).tolist()
    inputs = [torch.randint(3, vocab, (args.input_tokens,), generator=draw).tolist()
              for _ in range(args.inputs)]
    prefixes = [s[: args.input_tokens // 2] for s in inputs]
    jobs = [(i, t) for i in range(len(inputs))
            for t in range(max(1, args.input_tokens // 2), args.input_tokens, 8)]
    sides = {"re-read": PromptedLM(lm, prompt, cache_prompt=False),
             "cached": PromptedLM(lm, prompt)}

    cached = sides["cached"]
    with cached.evaluating():
        build, _ = seconds(cached.prompt_cache, 1)
    if cached.prompt_cache() is None:
        raise SystemExit(f"{args.model}: its cache is not full per-layer keys and values, so "
                         "the prompt is re-read on both sides; nothing to compare")

    scored = sum(len(s) - 1 for s in inputs)
    generated = len(prefixes) * args.new_tokens
    continued = sum(len(inputs[i]) - t for i, t in jobs)
    results: dict[str, dict] = {}
    for name, prompted in sides.items():
        predictions = prompted.next_token_argmax(inputs)
        calls = {
            "score": partial(prompted.targets, inputs, 1, batch_size=args.batch_size),
            "generate": partial(prompted.generate, prefixes, args.new_tokens,
                                batch_size=args.batch_size),
            "el": partial(prompted.greedy_to_the_end, inputs, predictions, jobs,
                          args.batch_size),
        }
        for call in calls.values():  # warm-up: first-call allocations stay out of the timing
            call()
        timed = {key: seconds(call, args.repeats) for key, call in calls.items()}
        results[name] = {"score_ms": 1000 * timed["score"][0] / scored,
                         "generate_ms": 1000 * timed["generate"][0] / generated,
                         "el_ms": 1000 * timed["el"][0] / continued,
                         "logprobs": torch.tensor([v for r in timed["score"][1]
                                                   for v in r.logprobs]),
                         "tokens": timed["generate"][1], "continuations": timed["el"][1]}

    slow, fast = results["re-read"], results["cached"]
    config = lm.model.config
    print(f"model {args.model} ({config.model_type}, {config.num_hidden_layers} layers, width "
          f"{config.hidden_size}); prompt {args.prompt_tokens} tokens; {args.inputs} inputs of "
          f"{args.input_tokens} tokens, batch {args.batch_size}; {args.new_tokens} new tokens "
          f"from the first {args.input_tokens // 2}; median of {args.repeats}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'':34s}{'re-read':>10s}{'cached':>10s}{'speed-up':>10s}")
    for key, label in (("score_ms", "ms per scored token"),
                       ("generate_ms", "ms per generated token (greedy)"),
                       ("el_ms", "ms per EL token (greedy_to_the_end)")):
        print(f"{label:34s}{slow[key]:10.3f}{fast[key]:10.3f}{slow[key] / fast[key]:9.1f}x")
    print(f"reading the prompt into the cache, once: {1000 * build:.1f} ms")
    gap = (slow["logprobs"] - fast["logprobs"]).abs().max().item()
    same = {key: "equal" if slow[key] == fast[key] else "DIFFER"
            for key in ("tokens", "continuations")}
    print(f"same results: log-probabilities differ by at most {gap:.2e}; greedy tokens "
          f"{same['tokens']}; EL continuations {same['continuations']}")


if __name__ == "__main__":
    main()
