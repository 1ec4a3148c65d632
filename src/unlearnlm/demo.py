"""``unlearnlm demo``: make a model leak fictitious personal records, then make it forget some.

The story, step by step on the console:

1. Generate seeded fictitious records: some to forget, some to keep, a pool of look-alikes (the
   analogous set) and a few never-seen ones (to calibrate what "forgotten" scores like).
2. Fine-tune the model on the forget + keep records until it recites them (cached: a second run
   skips this).
3. Show what leaks: for each record, the continuation of "Personal record of <name>." and which
   private fields (phone, email, address, ID) appear in it; and the model's fluency.
4. Run ICU on the forget records, with the kept ones as retain set.
5. Show the same tables after, and write report.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from unlearnlm.data.records import (
    FLUENCY_PROMPTS,
    PRIVATE_FIELDS,
    fake_records,
    leaked_fields,
    write_records,
)
from unlearnlm.lm.generation import generate_continuations
from unlearnlm.settings import Settings, setting, shared

log = logging.getLogger(__name__)

@dataclass
class DemoSettings(Settings):
    """Sizes and learning rates of the demo; the defaults are the ones measured in the README."""

    command = "demo"

    model: str = shared("model", "smollm2-135m", "base model (directory, hub id, .gguf or "
                        "smollm2-135m)")
    forget: int = setting(8, "fictitious records to forget", positive=True)
    keep: int = setting(16, "records to keep (the retain set; learnt with the forget records)",
                        positive=True)
    pool: int = setting(300, "look-alike records: the analogous pool", positive=True)
    calibration: int = setting(16, "never-seen records that calibrate the thresholds",
                               positive=True)
    seed: int = shared("seed", 0, "seed of the records, fine-tuning and unlearning")
    finetune_lr: float = setting(1e-3, "learning rate that makes the model leak", positive=True)
    finetune_epochs: int = setting(30, "fine-tuning epochs at most", positive=True)
    finetune_target: float = setting(
        0.99, "fine-tuning stops once mean suffix token accuracy reaches this", interval="(0, 1]")
    unlearn_lr: float = setting(1.5e-3, "ICU's learning rate", positive=True)
    unlearn_epochs: int = setting(8, "ICU's epochs at most", positive=True)
    batch_size: int = shared("batch_size", 8, "records per step, fine-tuning and unlearning")
    trainable_layers: int | None = shared(
        "trainable_layers", 10, "fine-tuning and unlearning train only the last N transformer "
        "blocks; null: all")
    retain_weight: float = setting(
        1.0, "weight of the NLL on the kept records during unlearning; 0: none",
        interval="[0, inf)")
    drop_rule: str = setting("and", "IUR drop test: 'and' (paper) or 'or' (official code)",
                             choices=("and", "or"))
    forget_tokens: str = setting(
        "all", "gradient-ascent targets: 'all' suffix tokens or only the 'distinct' ones (see "
        "`unlearnlm unlearn --help`)", choices=("all", "distinct"))
    pair_with_pool: bool = setting(
        True, "pair each forget record with its nearest look-alike or kept record (ICU's analogous "
        "texts); off: with its nearest kept record")
    mixed_precision: str = shared("mixed_precision")
    wikitext_docs: int = setting(8, "WikiText documents for the fluency perplexity; 0: none",
                                 interval="[0, inf)")
    wikitext_tokens: int = setting(256, "tokens of each WikiText document", positive=True)
    show_kept: int = setting(4, "kept records shown in the console tables",
                             interval="[0, inf)")


def _say(text: str = "") -> None:
    print(text, flush=True)


def make_data(out: Path, s: DemoSettings) -> dict[str, list[dict]]:
    """Write forget / keep / train (forget + keep) / pool / calibration JSONL files."""
    people = fake_records(s.forget + s.keep + s.pool + s.calibration, seed=s.seed)
    sets = {
        "forget": people[: s.forget],
        "keep": people[s.forget : s.forget + s.keep],
        "pool": people[s.forget + s.keep : s.forget + s.keep + s.pool],
        "calibration": people[s.forget + s.keep + s.pool :],
    }
    sets["train"] = sets["forget"] + sets["keep"]
    for name, records in sets.items():
        write_records(out / "data" / f"{name}.jsonl", records)
    return sets


def leaky_model(out: Path, s: DemoSettings, train_file: Path) -> tuple[Path, dict]:
    """Fine-tune the base model on the training records, or reuse the cached result."""
    from unlearnlm.train.finetune import cached_finetune

    return cached_finetune(
        s.model, train_file, "leaky", say=lambda line: _say(f"  {line}"),
        max_epochs=s.finetune_epochs, lr=s.finetune_lr, batch_size=s.batch_size,
        target_accuracy=s.finetune_target, prefix_tokens=50, suffix_tokens=None,
        mixed_precision=s.mixed_precision, seed=s.seed, trainable_layers=s.trainable_layers,
    )


def probe(model, tokenizer, records: list[dict], mixed_precision: str) -> list[dict]:
    """Greedy continuation of each record's prefix, and which private fields it reveals."""
    prefixes = [tokenizer(r["prefix"], add_special_tokens=False)["input_ids"] for r in records]
    longest = max(len(tokenizer(r["suffix"], add_special_tokens=False)["input_ids"])
                  for r in records)
    with _autocast(mixed_precision):
        outs = generate_continuations(model, prefixes, longest + 2,
                                      pad_token_id=tokenizer.pad_token_id,
                                      eos_token_id=tokenizer.eos_token_id)
    texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    return [{"id": r["id"], "name": r["name"], "continuation": t, "leaked": leaked_fields(t, r)}
            for r, t in zip(records, texts)]


def fluency(model, tokenizer, s: DemoSettings) -> dict:
    """Continuations of fixed general prompts, and WikiText perplexity on a small sample."""
    from unlearnlm.metrics.scores import perplexity

    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in FLUENCY_PROMPTS]
    with _autocast(s.mixed_precision):
        outs = generate_continuations(model, prompts, 20, pad_token_id=tokenizer.pad_token_id,
                                      eos_token_id=tokenizer.eos_token_id)
    result = {"continuations": [tokenizer.decode(o, skip_special_tokens=True) for o in outs]}
    texts = _wikitext(s.wikitext_docs)
    if texts:
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"][: s.wikitext_tokens]
               for t in texts]
        with _autocast(s.mixed_precision):
            result["wikitext_ppl"] = perplexity(model, [i for i in ids if len(i) > 1])
    return result


def _wikitext(count: int) -> list[str]:
    import csv

    from unlearnlm.paths import data_root

    root = data_root(required=False)
    path = root / "eval" / "wikitext.csv" if root else None
    if path is None or not path.is_file():
        return []
    csv.field_size_limit(1 << 30)
    with open(path, encoding="utf-8", newline="") as handle:
        return [row["text"] for _, row in zip(range(count), csv.DictReader(handle))]


def _autocast(mixed_precision: str):
    if mixed_precision == "bf16":
        return torch.autocast("cpu" if not torch.cuda.is_available() else "cuda",
                              dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def leak_table(rows: list[dict], width: int = 60) -> str:
    head = f"  {'record':24s} {'phone':5s} {'email':5s} {'addr':5s} {'ID':5s}  continuation"
    lines = [head]
    for row in rows:
        marks = " ".join(f"{'LEAK' if row['leaked'][f] else '-':5s}" for f in PRIVATE_FIELDS)
        text = row["continuation"].replace("\n", " ")
        text = text if len(text) <= width else text[: width - 3] + "..."
        lines.append(f"  {row['name'][:24]:24s} {marks}  {text}")
    return "\n".join(lines)


def leak_share(rows: list[dict]) -> tuple[int, int]:
    leaked = sum(v for row in rows for v in row["leaked"].values())
    return leaked, len(rows) * len(PRIVATE_FIELDS)


def _state(model, tokenizer, sets, s: DemoSettings) -> dict:
    model.eval()
    with torch.no_grad():
        rows = probe(model, tokenizer, sets["forget"] + sets["keep"], s.mixed_precision)
        return {"forget": rows[: len(sets["forget"])], "keep": rows[len(sets["forget"]) :],
                "fluency": fluency(model, tokenizer, s)}


def _show_state(title: str, state: dict, s: DemoSettings) -> None:
    f_leak, f_total = leak_share(state["forget"])
    k_leak, k_total = leak_share(state["keep"])
    _say(f"\n{title}")
    _say(f"  Records to forget: {f_leak} of {f_total} private fields leak.")
    _say(leak_table(state["forget"]))
    _say(f"  Records to keep (first {s.show_kept} of {len(state['keep'])}): "
         f"{k_leak} of {k_total} private fields leak ({100 * k_leak / max(k_total, 1):.0f}%).")
    _say(leak_table(state["keep"][: s.show_kept]))
    flu = state["fluency"]
    if "wikitext_ppl" in flu:
        _say(f"  WikiText perplexity: {flu['wikitext_ppl']:.1f}")
    for prompt, text in zip(FLUENCY_PROMPTS, flu["continuations"]):
        _say(f"  \"{prompt}\" -> {text.strip()[:70]!r}")


def run_demo(out: str | Path, settings: DemoSettings | None = None) -> dict:
    """The whole demo; returns a summary and writes data/, model/, report.md, summary.json."""
    from unlearnlm.lm.loading import load_model
    from unlearnlm.report.demo import write_demo_report
    from unlearnlm.train.unlearn import unlearn

    s = settings or DemoSettings()
    out = Path(out)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    _say(f"Step 1/5  Writing fictitious records: {s.forget} to forget, {s.keep} to keep, "
         f"{s.pool} look-alikes (the analogous pool), {s.calibration} never seen.")
    sets = make_data(out, s)

    _say("Step 2/5  Making the model leak them.")
    clock = time.perf_counter()
    leaky_dir, ft = leaky_model(out, s, out / "data" / "train.jsonl")
    timings["finetune"] = time.perf_counter() - clock
    _say(f"  Suffix token accuracy {ft['suffix_accuracy']:.3f} after {len(ft['epochs'])} epochs"
         f" ({ft.get('seconds', 0):.0f} s when built).")

    _say("Step 3/5  What the leaky model reveals.")
    clock = time.perf_counter()
    model, tokenizer, _ = load_model(str(leaky_dir))
    before = _state(model, tokenizer, sets, s)
    del model
    timings["probe_before"] = time.perf_counter() - clock
    _show_state("BEFORE unlearning", before, s)

    _say(f"\nStep 4/5  ICU on the {s.forget} records to forget (kept records as --retain, "
         f"never-seen ones as --calibrate-on).")
    clock = time.perf_counter()
    record = unlearn(
        model=str(leaky_dir), forget=str(out / "data" / "forget.jsonl"),
        pool=str(out / "data" / "pool.jsonl") if s.pair_with_pool else None,
        retain=str(out / "data" / "keep.jsonl"),
        calibrate_on=str(out / "data" / "calibration.jsonl"), out=str(out / "model"),
        lr=s.unlearn_lr, max_epochs=s.unlearn_epochs, batch_size=s.batch_size,
        prefix_tokens=50, suffix_tokens=None, mixed_precision=s.mixed_precision,
        loss_weights={"retain_nll": s.retain_weight} if s.retain_weight else {},
        seed=s.seed, trainable_layers=s.trainable_layers, el_every_epoch=False,
        calibrate_el=False, stop_on_el=False, drop_rule=s.drop_rule, forget_tokens=s.forget_tokens,
        overwrite=True,
    )
    timings["unlearn"] = time.perf_counter() - clock
    _say(f"  Stopped after epoch {record['stopped']['epoch']}: {record['stopped']['reason']}.")

    _say("Step 5/5  What the unlearned model reveals.")
    clock = time.perf_counter()
    model, tokenizer, _ = load_model(str(out / "model"))
    after = _state(model, tokenizer, sets, s)
    timings["probe_after"] = time.perf_counter() - clock
    _show_state("AFTER unlearning", after, s)
    timings["total"] = time.perf_counter() - start
    summary = _summary(s, ft, record, before, after, timings)
    report = write_demo_report(out, summary, before, after, record)
    _say(f"\nDone in {timings['total']:.0f} s. Forget records leaking: "
         f"{summary['forget_leaked_after']} of {summary['fields_forget']} fields (before "
         f"{summary['forget_leaked_before']}); kept records still leaking: "
         f"{summary['keep_kept_share']:.0%} of what they leaked before.")
    _say(f"Files: {report} and {out / 'report.html'} (the report), {out / 'model'} (the "
         f"unlearned model and run.json), {out / 'data'} (the records), {out / 'summary.json'}.")
    return summary


def _summary(s, ft, record, before, after, timings) -> dict:
    fb, total_f = leak_share(before["forget"])
    fa, _ = leak_share(after["forget"])
    kb, total_k = leak_share(before["keep"])
    ka, _ = leak_share(after["keep"])
    flu_b, flu_a = before["fluency"], after["fluency"]
    return {
        "settings": asdict(s),
        "finetune_epochs": len(ft["epochs"]),
        "finetune_suffix_accuracy": ft["suffix_accuracy"],
        "unlearn_epochs": record["stopped"]["epoch"],
        "stopped": record["stopped"]["reason"],
        "fields_forget": total_f,
        "fields_keep": total_k,
        "forget_leaked_before": fb,
        "forget_leaked_after": fa,
        "keep_leaked_before": kb,
        "keep_leaked_after": ka,
        "keep_kept_share": ka / kb if kb else 0.0,
        "wikitext_ppl_before": flu_b.get("wikitext_ppl"),
        "wikitext_ppl_after": flu_a.get("wikitext_ppl"),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
