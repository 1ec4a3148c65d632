"""SISA on the demo's records: a deletion's cost against a full retrain, and what sharding costs.

usage: python benchmarks/sisa_deletion.py --out runs/sisa [--shards 4] [--slices 2] [--epochs 10]
           [--lr 1e-3] [--lora-rank 8] [--model smollm2-135m] [--json FILE]

One run, one folder (``--out``, started empty):

1. the demo's records (``unlearnlm demo``'s data: 8 to forget, 16 to keep, seed 0);
2. ``sisa train`` on the 24 (``trained``), then ``sisa forget`` of one forget record
   (``forgot-one``) and of all 8 (``forgot-eight``), each from ``trained``;
3. the full retrain for the eight: ``sisa train`` on the 16 kept records alone (``scratch``),
   whose adapters the deletion must equal (counted tensor by tensor);
4. per model, through the model interface: private fields (phone, e-mail, address, ID) in the
   greedy continuation of each record's opening, of the forget and the kept records, and WikiText
   perplexity (8 documents of 256 tokens, as the demo);
5. without sharding: one adapter on all 24 records, same slices and epochs (``single``), and
   its measures. ``out/results.json`` is rewritten after each measured model.

It prints one table and the times: each deletion's wall time (model loading included) over the
full training's (the training on 24 records for the single deletion, the retrain on the 16
remaining ones for the eight), and the same ratio of the process's CPU time, which other jobs on
a shared machine disturb less.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from unlearnlm.data.records import PRIVATE_FIELDS, leaked_fields, write_records
from unlearnlm.demo import DemoSettings, make_data, wikitext_texts
from unlearnlm.lm.interface import LM
from unlearnlm.metrics.scores import perplexity
from unlearnlm.rundir import write_json
from unlearnlm.train.sisa import (
    SisaForgetSettings,
    SisaTrainSettings,
    sisa_ensemble,
    sisa_forget,
    sisa_train,
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (empty or new)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--wikitext-docs", type=int, default=8)
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args(argv)


def leaks(lm: LM, records: list[dict]) -> int:
    """Private fields of ``records`` found in the greedy continuations of their openings."""
    tokenizer = lm.tokenizer
    prefixes = [tokenizer(r["prefix"], add_special_tokens=False)["input_ids"] for r in records]
    longest = max(len(tokenizer(r["suffix"], add_special_tokens=False)["input_ids"])
                  for r in records)
    outs = lm.generate(prefixes, longest + 2, eos_token_id=lm.eos_token_id, batch_size=8)
    texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    return sum(sum(leaked_fields(t, r).values()) for t, r in zip(texts, records, strict=True))


def measure(lm: LM, sets: dict[str, list[dict]], docs: int) -> dict:
    start = time.perf_counter()
    row = {"forget_leaked": leaks(lm, sets["forget"]), "kept_leaked": leaks(lm, sets["keep"])}
    texts = wikitext_texts(DemoSettings(wikitext_docs=docs))
    if texts:
        ids = [lm.tokenizer(t, add_special_tokens=False)["input_ids"][:256] for t in texts]
        row["wikitext_ppl"] = round(perplexity(lm, [i for i in ids if len(i) > 1]), 2)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def same_adapters(a: Path, b: Path) -> dict:
    """Tensors of every checkpoint of two SISA folders: how many are equal bit for bit, and
    the largest difference."""
    equal = total = 0
    largest = 0.0
    for path in sorted(a.glob("shard-*/slice-*/adapter_model.safetensors")):
        mine, theirs = load_file(path), load_file(b / path.relative_to(a))
        for key, tensor in mine.items():
            total += 1
            equal += torch.equal(tensor, theirs[key])
            largest = max(largest, float((tensor - theirs[key]).abs().max()))
    return {"equal_tensors": equal, "tensors": total, "largest_difference": largest}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    out = Path(args.out)
    sets = make_data(out, DemoSettings())
    one = out / "data" / "forget_one.jsonl"
    write_records(one, sets["forget"][:1])
    common = dict(model=args.model, shards=args.shards, slices=args.slices, epochs=args.epochs,
                  lr=args.lr, lora_rank=args.lora_rank, batch_size=args.batch_size)

    def train(name: str, data: str, **changes) -> dict:
        clock, cpu = time.perf_counter(), time.process_time()
        record = sisa_train(SisaTrainSettings(**{**common, **changes}, data=data,
                                              out=str(out / name)))
        record["wall_seconds"] = round(time.perf_counter() - clock, 1)
        record["cpu_seconds"] = round(time.process_time() - cpu, 1)
        return record

    def forget(name: str, texts: Path) -> dict:
        clock, cpu = time.perf_counter(), time.process_time()
        record = sisa_forget(SisaForgetSettings(sisa_dir=str(out / "trained"), forget=str(texts),
                                                out=str(out / name)))
        deletion = record["deletions"][-1]
        deletion["wall_seconds"] = round(time.perf_counter() - clock, 1)
        deletion["cpu_seconds"] = round(time.process_time() - cpu, 1)
        return deletion

    data = out / "data"
    result: dict = {"settings": common, "models": {}}

    def measured(name: str, lm: LM) -> None:
        result["models"][name] = measure(lm, sets, args.wikitext_docs)
        write_json(out / "results.json", result)  # after each step: a killed run keeps them
        gc.collect()

    trained = train("trained", str(data / "train.jsonl"))
    deletions = {"one": forget("forgot-one", one), "eight": forget("forgot-eight",
                                                                  data / "forget.jsonl")}
    scratch = train("scratch", str(data / "keep.jsonl"))
    result.update({
        "shard_sizes": trained["shard_sizes"], "train_seconds": trained["wall_seconds"],
        "scratch_seconds": scratch["wall_seconds"], "deletions": deletions,
        "ratio_one": round(deletions["one"]["wall_seconds"] / trained["wall_seconds"], 3),
        "ratio_eight": round(deletions["eight"]["wall_seconds"] / scratch["wall_seconds"], 3),
        "train_cpu_seconds": trained["cpu_seconds"], "scratch_cpu_seconds": scratch["cpu_seconds"],
        "ratio_one_cpu": round(deletions["one"]["cpu_seconds"] / trained["cpu_seconds"], 3),
        "ratio_eight_cpu": round(deletions["eight"]["cpu_seconds"] / scratch["cpu_seconds"], 3),
        "exact_eight": same_adapters(out / "forgot-eight", out / "scratch"),
    })
    measured("base", LM.load(args.model))
    for name in ("trained", "forgot-one", "forgot-eight"):
        measured(name, sisa_ensemble(out / name))
    single = train("single", str(data / "train.jsonl"), shards=1)
    result["single_seconds"] = single["wall_seconds"]
    measured("single", sisa_ensemble(out / "single"))
    print(table(result), flush=True)
    if args.json:
        write_json(args.json, result)
    return result


def table(result: dict) -> str:
    fields = len(PRIVATE_FIELDS)
    lines = ["| model | forget fields leaked | kept fields leaked | WikiText PPL |",
             "|---|---|---|---|"]
    for name, row in result["models"].items():
        lines.append(f"| {name} | {row['forget_leaked']}/{8 * fields} | "
                     f"{row['kept_leaked']}/{16 * fields} | {row.get('wikitext_ppl', '-')} |")
    d = result["deletions"]
    lines += ["", f"shard sizes {result['shard_sizes']}; training on 24: "
              f"{result['train_seconds']} s, retrain on the 16 kept: "
              f"{result['scratch_seconds']} s, "
              f"one adapter on 24: {result['single_seconds']} s",
              f"forget one record: {d['one']['wall_seconds']} s (shards "
              f"{d['one']['retrained_from_slice']}), ratio {result['ratio_one']} (CPU time: "
              f"{result['ratio_one_cpu']})",
              f"forget eight: {d['eight']['wall_seconds']} s (shards "
              f"{d['eight']['retrained_from_slice']}), ratio {result['ratio_eight']} (CPU time: "
              f"{result['ratio_eight_cpu']})",
              f"forget eight against the retrain: {json.dumps(result['exact_eight'])}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
