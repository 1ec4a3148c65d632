"""Time EL_n, MA, BLEU and BERTScore-F1 on extraction-benchmark samples: unlearnlm's functions
against the official code's way (one ``generate`` call per scored position), side by side in one
process, and check that both give the same values.

Samples: the forget set ``lm_extraction_32_0.csv``; each sample is the text of its last 100 GPT-2
tokens (prefix + suffix of the benchmark), split 50/50 by the model's own tokens with
``unlearnlm.data.texts.split_records`` (texts under 100 model tokens are split in proportion).

- ours: per prefix length (as ``evaluate.suite.memorisation_scores`` groups them),
  ``memorization_accuracy`` (one teacher-forced pass) and ``extraction_likelihood`` (the exact
  shortcut); one batched ``generate_continuations`` from the prefixes (as ``forget_metrics``),
  then ``bleu_scores`` and ``bertscore_f1``.
- naive (written here, after ``validation_ma`` / ``validation_el`` of the official ICU code,
  ``train_neo_meanwhile_update.py``): samples in batches of ``--naive-batch`` (8, the official
  batch size) in file order; MA calls ``generate(max_new_tokens=1)`` once per scored position t,
  EL_n calls ``generate`` once per start t to produce the rest of the sample, all rows of a call
  sharing the prompt length t (no padding); the n-gram overlap is counted here. BLEU and
  BERTScore: one ``generate`` call per sample from its prefix, then each sample scored alone.

Both score the same positions: MA and EL over the suffix (t >= prefix length). Greedy means plain
argmax in both; neither stops at the end-of-text token.

Usage: .venv/bin/python benchmarks/eval_speed.py [--samples 32] [--n 10] [--repeats 1]
       [--naive-batch 8] [--naive-samples K] [--model smollm2-135m] [--memorise] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from unlearnlm.data.texts import Record, Sample, read_records, split_records
from unlearnlm.lm.generation import evaluation_mode, generate_continuations
from unlearnlm.lm.loading import gpt2_tokenizer_from_tiktoken, load_model
from unlearnlm.metrics.scores import (
    bertscore_f1,
    bleu,
    bleu_scores,
    extraction_likelihood,
    memorization_accuracy,
)
from unlearnlm.paths import cache_root, data_root
from unlearnlm.rundir import write_json, write_text_atomic

METRICS = ("ma", "el", "generation", "bleu", "bertscore")
LABELS = {
    "ma": "MA",
    "el": "EL_{n}",
    "generation": "generation from prefix (for BLEU and BERTScore)",
    "bleu": "BLEU (scoring)",
    "bertscore": "BERTScore-F1 (scoring)",
}
GREEDY = {  # plain argmax, whatever the model's saved generation settings say
    "do_sample": False,
    "num_beams": 1,
    "temperature": None,
    "top_k": None,
    "top_p": None,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_new_tokens": 0,
    "eos_token_id": None,
}


# --- samples ---------------------------------------------------------------------------------


def extraction_records(forget_csv: Path, count: int) -> list[Record]:
    """The first ``count`` rows of a forget set, each as the text of its last 100 GPT-2 tokens
    (the benchmark's prefix_ids + suffix_ids, decoded together)."""
    root = data_root()
    with open(forget_csv, encoding="utf-8", newline="") as handle:
        ids = [int(row["doc_id"]) for row in csv.DictReader(handle)][:count]
    wanted, rows = set(ids), {}
    with open(root / "lm_extraction" / "lm_extraction_text.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if '"split": "train"' in line[:40]:
                row = json.loads(line)
                if row["index"] in wanted:
                    rows[row["index"]] = row
    gpt2 = gpt2_tokenizer_from_tiktoken(root / "tokenizers" / "gpt2.tiktoken")
    return [Record(str(i), gpt2.decode(rows[i]["prefix_ids"] + rows[i]["suffix_ids"]))
            for i in ids]


def memorised_model(spec: str, records: list[Record]):
    """``spec`` fine-tuned on the records until it reproduces them (cached; not timed)."""
    from unlearnlm.train.finetune import cached_finetune

    data = cache_root() / "benchmarks" / f"eval-speed-{len(records)}.jsonl"
    write_text_atomic(data, "".join(json.dumps({"id": r.id, "text": r.text}) + "\n"
                                    for r in records))
    assert [r.text for r in read_records(data)] == [r.text for r in records]
    start = time.perf_counter()
    out, record = cached_finetune(spec, data, f"eval-speed-{len(records)}", say=print,
                                  max_epochs=40, progress=False)
    print(f"memorised model: {out} (suffix token accuracy {record['suffix_accuracy']:.3f} "
          f"after {len(record['epochs'])} epochs; {time.perf_counter() - start:.0f} s here)")
    return load_model(str(out))


# --- counting generate calls -----------------------------------------------------------------


class GenerateCounter:
    """Wraps ``model.generate`` to count calls, rows and generated tokens."""

    def __init__(self, model) -> None:
        self.calls = self.rows = self.tokens = 0
        original = model.generate

        def counted(*args, **kwargs):
            output = original(*args, **kwargs)
            prompt = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            self.calls += 1
            self.rows += output.shape[0]
            self.tokens += output.shape[0] * (output.shape[1] - prompt.shape[1])
            return output

        model.generate = counted

    def take(self) -> dict[str, int]:
        counts = {"generate_calls": self.calls, "rows": self.rows, "new_tokens": self.tokens}
        self.calls = self.rows = self.tokens = 0
        return counts


def note(verbose: bool, side: str, metric: str, seconds: float) -> None:
    if verbose:
        print(f"  {side:5s} {metric:10s} {seconds:8.2f} s", flush=True)


# --- ours --------------------------------------------------------------------------------------


def run_ours(
    model, tokenizer, samples: list[Sample], n: int, counter, verbose: bool = False
) -> tuple[dict, dict, dict]:
    """Times, per-sample values and generate counts of the package's functions."""
    times, values, counts = {}, {m: [0.0] * len(samples) for m in ("ma", "el")}, {}
    groups: dict[int, list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(len(sample.prefix_ids), []).append(i)
    for metric in ("ma", "el"):
        start = time.perf_counter()
        if metric == "el":  # one call: all samples' generations share batches
            values["el"] = extraction_likelihood(
                model, [s.input_ids for s in samples], [len(s.prefix_ids) for s in samples], n,
                pad_token_id=tokenizer.pad_token_id)
        for prefix_length, indices in groups.items() if metric == "ma" else ():
            sequences = [samples[i].input_ids for i in indices]
            scores = memorization_accuracy(model, sequences, prefix_length)
            for i, score in zip(indices, scores, strict=True):
                values[metric][i] = score
        times[metric] = time.perf_counter() - start
        note(verbose, "ours", metric, times[metric])
        counts[metric] = counter.take()
    start = time.perf_counter()
    longest = max(len(s.suffix_ids) for s in samples)
    outputs = generate_continuations(model, [s.prefix_ids for s in samples], longest,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    candidates = [tokenizer.decode(out[: len(s.suffix_ids)], skip_special_tokens=True)
                  for out, s in zip(outputs, samples, strict=True)]
    times["generation"] = time.perf_counter() - start
    note(verbose, "ours", "generation", times["generation"])
    counts["generation"] = counter.take()
    references = [tokenizer.decode(s.suffix_ids, skip_special_tokens=True) for s in samples]
    start = time.perf_counter()
    values["bleu"] = bleu_scores(candidates, references)
    times["bleu"] = time.perf_counter() - start
    note(verbose, "ours", "bleu", times["bleu"])
    start = time.perf_counter()
    values["bertscore"] = bertscore_f1(candidates, references)
    times["bertscore"] = time.perf_counter() - start
    note(verbose, "ours", "bertscore", times["bertscore"])
    return times, values, counts


# --- naive -------------------------------------------------------------------------------------


def greedy(model, prompts: list[list[int]], new_tokens: int, pad_token_id: int) -> list[list[int]]:
    """One ``generate`` call on prompts of equal length (no padding); the new tokens only."""
    input_ids = torch.tensor(prompts, dtype=torch.long)
    with evaluation_mode(model), torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                max_new_tokens=new_tokens, pad_token_id=pad_token_id, **GREEDY)
    return output[:, input_ids.shape[1]:].tolist()


def overlap_share(generated: list[int], truth: list[int], n: int) -> float:
    """Share of the generation's n-grams found among the true continuation's (official code:
    ``len(p_tp) / len(l_ngram)``; both have the same length here); 0.0 without any n-gram."""
    truth_grams = {tuple(truth[i : i + n]) for i in range(len(truth) - n + 1)}
    grams = [tuple(generated[i : i + n]) for i in range(len(generated) - n + 1)]
    if not grams:
        return 0.0
    return sum(gram in truth_grams for gram in grams) / len(grams)


def naive_batches(samples: list[Sample], size: int) -> list[list[Sample]]:
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def naive_ma(model, samples: list[Sample], size: int, pad: int) -> list[float]:
    """MA: one ``generate(max_new_tokens=1)`` per position t, for the batch's samples whose
    suffix holds t (all prompts x_<t have length t)."""
    scores = []
    for batch in naive_batches(samples, size):
        hits = [0] * len(batch)
        first = min(len(s.prefix_ids) for s in batch)
        for t in range(first, max(len(s.input_ids) for s in batch)):
            rows = [k for k, s in enumerate(batch) if len(s.prefix_ids) <= t < len(s.input_ids)]
            predicted = greedy(model, [batch[k].input_ids[:t] for k in rows], 1, pad)
            for k, tokens in zip(rows, predicted, strict=True):
                hits[k] += tokens[0] == batch[k].input_ids[t]
        scores += [h / len(s.suffix_ids) for h, s in zip(hits, batch, strict=True)]
    return scores


def naive_el(model, samples: list[Sample], size: int, n: int, pad: int) -> list[float]:
    """EL_n: one ``generate`` per start t, producing the rest of each sample greedily; the
    overlap sum over starts divided by (number of starts - n + 1), as the official code."""
    scores = []
    for batch in naive_batches(samples, size):
        totals = [0.0] * len(batch)
        first = min(len(s.prefix_ids) for s in batch)
        for t in range(first, max(len(s.input_ids) for s in batch)):
            rows = [k for k, s in enumerate(batch) if len(s.prefix_ids) <= t < len(s.input_ids)]
            wanted = max(len(batch[k].input_ids) - t for k in rows)
            outputs = greedy(model, [batch[k].input_ids[:t] for k in rows], wanted, pad)
            for k, output in zip(rows, outputs, strict=True):
                tokens = batch[k].input_ids
                totals[k] += overlap_share(output[: len(tokens) - t], tokens[t:], n)
        for total, sample in zip(totals, batch, strict=True):
            denominator = len(sample.suffix_ids) - n + 1
            scores.append(total / denominator if denominator > 0 else 0.0)
    return scores


def run_naive(
    model, tokenizer, samples: list[Sample], n: int, size: int, counter, verbose: bool = False
) -> tuple[dict, dict, dict]:
    """Times, per-sample values and generate counts of the naive loops."""
    pad = tokenizer.pad_token_id
    times, values, counts = {}, {}, {}
    start = time.perf_counter()
    values["ma"] = naive_ma(model, samples, size, pad)
    times["ma"] = time.perf_counter() - start
    note(verbose, "naive", "ma", times["ma"])
    counts["ma"] = counter.take()
    start = time.perf_counter()
    values["el"] = naive_el(model, samples, size, n, pad)
    times["el"] = time.perf_counter() - start
    note(verbose, "naive", "el", times["el"])
    counts["el"] = counter.take()
    start = time.perf_counter()
    candidates = [
        tokenizer.decode(greedy(model, [s.prefix_ids], len(s.suffix_ids), pad)[0],
                         skip_special_tokens=True)
        for s in samples
    ]
    times["generation"] = time.perf_counter() - start
    note(verbose, "naive", "generation", times["generation"])
    counts["generation"] = counter.take()
    references = [tokenizer.decode(s.suffix_ids, skip_special_tokens=True) for s in samples]
    start = time.perf_counter()
    values["bleu"] = [bleu(c, r) for c, r in zip(candidates, references, strict=True)]
    times["bleu"] = time.perf_counter() - start
    note(verbose, "naive", "bleu", times["bleu"])
    start = time.perf_counter()
    values["bertscore"] = [bertscore_f1([c], [r])[0]
                           for c, r in zip(candidates, references, strict=True)]
    times["bertscore"] = time.perf_counter() - start
    note(verbose, "naive", "bertscore", times["bertscore"])
    return times, values, counts


# --- report ------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32, help="how many forget samples")
    parser.add_argument("--n", type=int, default=10, help="EL n-gram order")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each side")
    parser.add_argument("--naive-batch", type=int, default=8,
                        help="samples per naive generate call (official code: 8; 1 = per sample)")
    parser.add_argument("--naive-samples", type=int, default=None,
                        help="time the naive side on the first K samples only and scale its "
                             "seconds linearly to --samples (values checked on those K)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--memorise", action="store_true",
                        help="fine-tune the model on the samples first (untimed, cached)")
    parser.add_argument("--forget", default=None, help="forget-set CSV (default: "
                        "$UNLEARNLM_DATA/lm_extraction/forget_sets/lm_extraction_32_0.csv)")
    parser.add_argument("--json", default=None, help="save the figures to this file")
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    forget = Path(args.forget or data_root() / "lm_extraction" / "forget_sets"
                  / "lm_extraction_32_0.csv")
    records = extraction_records(forget, args.samples)
    if args.memorise:
        model, tokenizer, _ = memorised_model(args.model, records)
    else:
        model, tokenizer, _ = load_model(args.model)
    model.eval()
    samples = split_records(records, tokenizer, 50, 50)
    naive_count = min(args.naive_samples or len(samples), len(samples))
    counter = GenerateCounter(model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, "
          f"{os.cpu_count()} cores; {len(samples)} samples of "
          f"{min(len(s.input_ids) for s in samples)}-{max(len(s.input_ids) for s in samples)} "
          f"tokens (prefix {min(len(s.prefix_ids) for s in samples)}-"
          f"{max(len(s.prefix_ids) for s in samples)}), EL_{args.n}, float32")

    # warm-up (untimed): ours on two samples, loading BERTScore's encoder; a short naive call
    run_ours(model, tokenizer, samples[:2], args.n, counter)
    greedy(model, [samples[0].prefix_ids] * min(args.naive_batch, 2), 2, tokenizer.pad_token_id)
    counter.take()

    ours_runs, naive_runs = [], []
    for repeat in range(args.repeats):
        ours_runs.append(run_ours(model, tokenizer, samples, args.n, counter, verbose=True))
        print(f"repeat {repeat + 1}: ours {sum(ours_runs[-1][0].values()):.1f} s", flush=True)
        naive_runs.append(run_naive(model, tokenizer, samples[:naive_count], args.n,
                                    args.naive_batch, counter, verbose=True))
        print(f"repeat {repeat + 1}: naive {sum(naive_runs[-1][0].values()):.1f} s "
              f"on {naive_count} samples", flush=True)
    scale = len(samples) / naive_count
    ours_s = {m: statistics.median(r[0][m] for r in ours_runs) for m in METRICS}
    naive_s = {m: statistics.median(r[0][m] for r in naive_runs) * scale for m in METRICS}
    ours_values, naive_values = ours_runs[0][1], naive_runs[0][1]
    diffs = {m: max(abs(a - b) for a, b in zip(ours_values[m], naive_values[m], strict=False))
             for m in ("ma", "el", "bleu", "bertscore")}
    unequal = {m: [samples[i].id for i, (a, b) in
                   enumerate(zip(ours_values[m], naive_values[m], strict=False)) if a != b]
               for m in ("ma", "el")}

    scaled = ""
    if naive_count < len(samples):
        scaled = f" (x{scale:.2f}: timed on {naive_count} samples)"
    print(f"\n| metric | ours s | naive s{scaled} | speed-up | generate calls ours / naive "
          "| max abs diff |")
    print("|---|---|---|---|---|---|")
    for metric in METRICS:
        label = LABELS[metric].format(n=args.n)
        calls = f"{ours_runs[0][2].get(metric, {}).get('generate_calls', 0)} / " \
                f"{naive_runs[0][2].get(metric, {}).get('generate_calls', 0)}"
        diff = f"{diffs[metric]:.3g}" if metric in diffs else "-"
        print(f"| {label} | {ours_s[metric]:.2f} | {naive_s[metric]:.2f} | "
              f"{naive_s[metric] / ours_s[metric]:.1f}x | {calls} | {diff} |")
    total_ours, total_naive = sum(ours_s.values()), sum(naive_s.values())
    print(f"| all four | {total_ours:.2f} | {total_naive:.2f} | "
          f"{total_naive / total_ours:.1f}x | | |")
    means = {m: (statistics.mean(ours_values[m][:naive_count]), statistics.mean(naive_values[m]))
             for m in diffs}
    print("\nmeans over the checked samples (ours / naive): " + ", ".join(
        f"{m} {a:.4f} / {b:.4f}" for m, (a, b) in means.items()))
    for metric in ("ma", "el"):
        verdict = "equal" if diffs[metric] <= 1e-9 else f"DIFFERENT on {unequal[metric]}"
        print(f"{metric}: {verdict} on {naive_count} samples (max abs diff {diffs[metric]:.3g})")

    if args.json:
        result = {
            "settings": vars(args) | {"threads": torch.get_num_threads(), "cpu": cpu_name(),
                                      "cores": os.cpu_count(), "torch": torch.__version__,
                                      "naive_timed_on": naive_count, "naive_scale": scale},
            "seconds": {"ours": ours_s, "naive": naive_s,
                        "ours_total": total_ours, "naive_total": total_naive},
            "speedup": {m: naive_s[m] / ours_s[m] for m in METRICS}
            | {"all_four": total_naive / total_ours},
            "all_runs_seconds": {"ours": [r[0] for r in ours_runs],
                                 "naive": [r[0] for r in naive_runs]},
            "generate_counts": {"ours": ours_runs[0][2], "naive": naive_runs[0][2]},
            "max_abs_diff": diffs,
            "values": {"ids": [s.id for s in samples], "ours": ours_values,
                       "naive": naive_values},
        }
        write_json(args.json, result)
        print(f"saved {args.json}")


if __name__ == "__main__":
    main()
