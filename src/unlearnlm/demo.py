"""``unlearnlm demo``: make a model leak fictitious personal records, then make it forget some.

The story, step by step on the console:

1. Generate seeded fictitious records: some to forget, some to keep, a pool of look-alikes (the
   analogous set), some never seen (to calibrate what "forgotten" scores like) and some strangers
   (never seen either, kept apart to judge the result).
2. Fine-tune the model on the forget + keep records until it recites them, with ordinary text
   (Wikipedia paragraphs) mixed into every step so that it stays fluent (cached: a second run
   skips this).
3. Show what leaks: for each record, the continuation of "Personal record of <name>." and which
   private fields (phone, email, address, ID) appear in it; and the model's fluency.
4. Unlearn the forget records (the default method, with the kept ones as retain set).
5. Show the same after, plus what a privacy officer asks: do sampled continuations leak, is a
   forgotten person continued like a stranger (right shapes, nobody else's fields), is the true
   text still more likely than a stranger's (NLL, membership-inference AUC); write the report.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from unlearnlm.data.records import (
    FLUENCY_PROMPTS,
    PRIVATE_FIELDS,
    fake_records,
    field_shapes,
    leaked_fields,
    others_fields,
    write_records,
)
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.generation import generate_continuations
from unlearnlm.rundir import write_text_atomic
from unlearnlm.settings import Settings, setting, shared

log = logging.getLogger(__name__)

# words of the record template: a general prompt continued with one of them drifted into records
RECORD_WORDS = ("Personal record", "Job:", "Phone:", "Email:", "ID number:", "Address:")


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
    strangers: int = setting(
        16, "never-seen records kept apart to judge the result (shapes, other people's fields, "
        "NLL, membership inference)", positive=True)
    seed: int = shared("seed", 0, "seed of the records, fine-tuning and unlearning")
    finetune_lr: float = setting(1e-3, "learning rate that makes the model leak", positive=True)
    finetune_epochs: int = setting(30, "fine-tuning epochs at most", positive=True)
    finetune_target: float = setting(
        0.99, "fine-tuning stops once mean suffix token accuracy reaches this", interval="(0, 1]")
    general_per_step: int = setting(
        4, "Wikipedia paragraphs mixed into every fine-tuning step so that the leaky model stays "
        "fluent; 0: none", interval="[0, inf)")
    general_tokens: int = setting(64, "tokens of each mixed-in paragraph", positive=True)
    general_loss: str = setting(
        "kl", "on the mixed-in paragraphs: 'kl' to the base model or 'nll'", choices=("kl", "nll"))
    general_weight: float = setting(1.0, "weight of the mixed-in paragraphs' term", positive=True)
    method: str = setting("relabel", "unlearning method (see `unlearnlm methods`)")
    unlearn_lr: float | None = setting(
        3e-4, "unlearning learning rate; null: the method's own", positive=True)
    unlearn_epochs: int = setting(10, "unlearning epochs at most", positive=True)
    unlearn_batch_size: int = setting(4, "forget records per unlearning step", positive=True)
    loss_weights: dict[str, float] = setting(
        {}, "override the method's loss weights, by term name", flag="loss-weight")
    batch_size: int = shared("batch_size", 8, "records per step, fine-tuning and unlearning")
    trainable_layers: int | None = shared(
        "trainable_layers", 10, "fine-tuning and unlearning train only the last N transformer "
        "blocks; null: all")
    retain_weight: float = setting(
        0.0, "weight of an extra NLL on the kept records during unlearning; 0: none",
        interval="[0, inf)")
    drop_rule: str = setting("and", "ICU's drop test: 'and' (paper) or 'or' (official code)",
                             choices=("and", "or"))
    forget_tokens: str | None = setting(
        None, "gradient-ascent targets: 'all' suffix tokens or only the 'distinct' ones (see "
        "`unlearnlm unlearn --help`); null: the method's own", choices=("all", "distinct"))
    pair_with_pool: bool = setting(
        True, "pair each forget record with its nearest look-alike or kept record (ICU's analogous "
        "texts); off: with its nearest kept record")
    samples: int = setting(5, "sampled continuations (temperature 1) per forgotten record",
                           interval="[0, inf)")
    mixed_precision: str = shared("mixed_precision")
    wikitext_docs: int = setting(8, "WikiText documents for the fluency perplexity; 0: none",
                                 interval="[0, inf)")
    wikitext_tokens: int = setting(256, "tokens of each WikiText document", positive=True)
    github_raw_url: str = shared("github_raw_url", help="base URL of raw GitHub files, where "
                                 "WikiText is downloaded from when neither the data folder nor "
                                 "the cache has it")
    show_kept: int = setting(4, "kept records shown in the console tables",
                             interval="[0, inf)")


def _say(text: str = "") -> None:
    print(text, flush=True)


def make_data(out: Path, s: DemoSettings) -> dict[str, list[dict]]:
    """Write forget / keep / train (forget + keep) / pool / calibration / strangers JSONL files,
    and general.jsonl (Wikipedia paragraphs, when the data folder has them)."""
    sizes = {"forget": s.forget, "keep": s.keep, "pool": s.pool, "calibration": s.calibration,
             "strangers": s.strangers}
    people = fake_records(sum(sizes.values()), seed=s.seed)
    sets, start = {}, 0
    for name, size in sizes.items():
        sets[name] = people[start : start + size]
        start += size
    sets["train"] = sets["forget"] + sets["keep"]
    for name, records in sets.items():
        write_records(out / "data" / f"{name}.jsonl", records)
    general = _general_texts(400, s.seed)
    if general:
        write_text_atomic(out / "data" / "general.jsonl",
                          "".join(json.dumps({"text": t}) + "\n" for t in general))
    return sets


def _general_texts(count: int, seed: int) -> list[str]:
    """Wikipedia lead paragraphs from the data folder (none when it is missing)."""
    import random

    from unlearnlm.paths import data_root

    root = data_root(required=False)
    path = root / "wiki" / "summaries_en-us.json" if root else None
    if path is None or not path.is_file():
        log.warning("No Wikipedia paragraphs found: the leaky model is fine-tuned on the records "
                    "alone and will be less fluent")
        return []
    pages = json.loads(path.read_text(encoding="utf-8"))
    texts = [p["extract"] for p in pages.values() if len(p.get("extract", "")) > 300]
    random.Random(seed).shuffle(texts)
    return texts[:count]


def leaky_model(out: Path, s: DemoSettings, train_file: Path) -> tuple[Path, dict]:
    """Fine-tune the base model on the training records, or reuse the cached result."""
    from unlearnlm.train.finetune import cached_finetune

    general = out / "data" / "general.jsonl"
    return cached_finetune(
        s.model, train_file, "leaky", say=lambda line: _say(f"  {line}"),
        max_epochs=s.finetune_epochs, lr=s.finetune_lr, batch_size=s.batch_size,
        target_accuracy=s.finetune_target, prefix_tokens=50, suffix_tokens=None,
        mixed_precision=s.mixed_precision, seed=s.seed, trainable_layers=s.trainable_layers,
        general=str(general) if general.is_file() and s.general_per_step else None,
        general_per_step=max(s.general_per_step, 1), general_tokens=s.general_tokens,
        general_loss=s.general_loss, general_weight=s.general_weight,
    )


def base_perplexity(s: DemoSettings, cached: Path) -> float | None:
    """WikiText perplexity of the base model, measured once and kept beside the leaky model."""
    from unlearnlm.lm.loading import load_model
    from unlearnlm.rundir import write_json

    path = cached / "base_fluency.json"
    if path.is_file():
        return json.loads(path.read_text())["wikitext_ppl"]
    model, tokenizer, _ = load_model(s.model)
    ppl = fluency(model, tokenizer, s).get("wikitext_ppl")
    write_json(path, {"model": s.model, "wikitext_ppl": ppl})
    return ppl


def continue_records(model, tokenizer, records: list[dict], s: DemoSettings,
                     temperature: float | None = None, copies: int = 1) -> list[str]:
    """Continuations of each record's prefix (greedy, or ``copies`` samples per record)."""
    prefixes = [tokenizer(r["prefix"], add_special_tokens=False)["input_ids"] for r in records]
    longest = max(len(tokenizer(r["suffix"], add_special_tokens=False)["input_ids"])
                  for r in records)
    with _autocast(s.mixed_precision):
        outs = generate_continuations(
            model, [p for p in prefixes for _ in range(copies)], longest + 2,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            temperature=temperature, seed=s.seed, batch_size=64)
    return [tokenizer.decode(o, skip_special_tokens=True) for o in outs]


def probe(model, tokenizer, records: list[dict], s: DemoSettings,
          train: list[dict]) -> list[dict]:
    """Greedy continuation of each record's prefix: which of its private fields it reveals,
    whether each field still has the right shape, and how many training records' fields
    (other people's) appear in it."""
    texts = continue_records(model, tokenizer, records, s)
    return [{"id": r["id"], "name": r["name"], "continuation": t, "leaked": leaked_fields(t, r),
             "shapes": field_shapes(t), "others": others_fields(t, r, train)}
            for r, t in zip(records, texts)]


def fluency(model, tokenizer, s: DemoSettings) -> dict:
    """Continuations of fixed general prompts, and WikiText perplexity on a small sample."""
    from unlearnlm.metrics.scores import perplexity

    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in FLUENCY_PROMPTS]
    with _autocast(s.mixed_precision):
        outs = generate_continuations(model, prompts, 20, pad_token_id=tokenizer.pad_token_id,
                                      eos_token_id=tokenizer.eos_token_id)
    result = {"continuations": [tokenizer.decode(o, skip_special_tokens=True) for o in outs]}
    texts = wikitext_texts(s)
    if texts:
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"][: s.wikitext_tokens]
               for t in texts]
        with _autocast(s.mixed_precision):
            result["wikitext_ppl"] = perplexity(model, [i for i in ids if len(i) > 1])
    return result


def wikitext_texts(s: DemoSettings) -> list[str]:
    """The first ``s.wikitext_docs`` WikiText documents (none when it is 0), from the data
    folder or the cache; downloaded into the cache (``unlearnlm data fetch wikitext``) when
    neither has them, and an UnlearnError saying how to get them when that fails."""
    import csv

    from unlearnlm.data.fetch import fetch
    from unlearnlm.paths import find_data

    if not s.wikitext_docs:
        return []
    path = find_data("eval/wikitext.csv")
    if path is None:
        _say("  WikiText is in neither the data folder nor the cache: downloading it "
             "(`unlearnlm data fetch wikitext`).")
        try:
            fetch("wikitext", s.github_raw_url, progress=False)
        except UnlearnError as exc:
            raise UnlearnError(
                f"the demo's WikiText perplexity needs eval/wikitext.csv, which could not be "
                f"downloaded ({exc}); run `unlearnlm data fetch wikitext` where there is a "
                "network, set UNLEARNLM_DATA to a folder that has it, or pass --wikitext-docs 0"
            ) from exc
        path = find_data("eval/wikitext.csv")
    csv.field_size_limit(1 << 30)
    with open(path, encoding="utf-8", newline="") as handle:
        return [row["text"] for _, row in zip(range(s.wikitext_docs), csv.DictReader(handle))]


def _autocast(mixed_precision: str):
    if mixed_precision == "bf16":
        return torch.autocast("cpu" if not torch.cuda.is_available() else "cuda",
                              dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def true_text_nll(model, tokenizer, records: list[dict]) -> list[float]:
    """Per record: mean NLL (nats/token) of its true suffix after its prefix."""
    from unlearnlm.metrics.scores import continuation_nll

    prefixes = [tokenizer(r["prefix"], add_special_tokens=False)["input_ids"] for r in records]
    suffixes = [tokenizer(r["suffix"], add_special_tokens=False)["input_ids"] for r in records]
    return continuation_nll(model, [p + q for p, q in zip(prefixes, suffixes)],
                            [len(p) for p in prefixes])


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
    """What the model reveals: forget, keep and stranger records, fluency, true-text NLL."""
    model.eval()
    groups = ("forget", "keep", "strangers")
    with torch.no_grad():
        rows = probe(model, tokenizer, [r for g in groups for r in sets[g]], s, sets["train"])
        state, start = {}, 0
        for g in groups:
            state[g] = rows[start : start + len(sets[g])]
            start += len(sets[g])
        state["fluency"] = fluency(model, tokenizer, s)
        state["nll"] = {g: true_text_nll(model, tokenizer, sets[g])
                        for g in ("forget", "strangers")}
    return state


def _sampled_leaks(model, tokenizer, records: list[dict], s: DemoSettings) -> int:
    """Private fields revealed in ``s.samples`` sampled continuations (temperature 1) of each
    record, counted over all samples."""
    if s.samples < 1:
        return 0
    with torch.no_grad():
        texts = continue_records(model, tokenizer, records, s, temperature=1.0, copies=s.samples)
    return sum(sum(leaked_fields(t, records[i // s.samples]).values())
               for i, t in enumerate(texts))


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
         f"{s.pool} look-alikes (the analogous pool), {s.calibration} never seen (calibration), "
         f"{s.strangers} strangers (never seen, for judging the result).")
    wikitext_texts(s)  # the fluency line's data, fetched now rather than after fine-tuning
    sets = make_data(out, s)

    _say("Step 2/5  Making the model leak them.")
    clock = time.perf_counter()
    leaky_dir, ft = leaky_model(out, s, out / "data" / "train.jsonl")
    base_ppl = base_perplexity(s, leaky_dir)
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
    if base_ppl is not None:
        _say(f"  (base model's WikiText perplexity: {base_ppl:.1f})")

    _say(f"\nStep 4/5  Unlearning the {s.forget} records to forget with '{s.method}' (kept "
         "records as --retain, never-seen ones as --calibrate-on).")
    clock = time.perf_counter()
    record = unlearn(**_unlearn_settings(out, s, leaky_dir))
    timings["unlearn"] = time.perf_counter() - clock
    _say(f"  Stopped after epoch {record['stopped']['epoch']}: {record['stopped']['reason']}.")

    _say("Step 5/5  What the unlearned model reveals.")
    clock = time.perf_counter()
    model, tokenizer, _ = load_model(str(out / "model"))
    after = _state(model, tokenizer, sets, s)
    after["sampled_leaks"] = _sampled_leaks(model, tokenizer, sets["forget"], s)
    timings["probe_after"] = time.perf_counter() - clock
    _show_state("AFTER unlearning", after, s)
    timings["total"] = time.perf_counter() - start
    summary = _summary(s, ft, record, before, after, timings, base_ppl)
    _show_checks(summary)
    report = write_demo_report(out, summary, before, after, record)
    _say(f"\nDone in {timings['total']:.0f} s. Files: {report} and {out / 'report.html'} (the "
         f"report), {out / 'model'} (the unlearned model and run.json), {out / 'data'} (the "
         f"records), {out / 'summary.json'}.")
    return summary


def _unlearn_settings(out: Path, s: DemoSettings, leaky_dir: Path) -> dict:
    data = out / "data"
    settings = dict(
        model=str(leaky_dir), forget=str(data / "forget.jsonl"),
        pool=str(data / "pool.jsonl") if s.pair_with_pool else None,
        retain=str(data / "keep.jsonl"), calibrate_on=str(data / "calibration.jsonl"),
        out=str(out / "model"), method=s.method, lr=s.unlearn_lr, max_epochs=s.unlearn_epochs,
        batch_size=s.unlearn_batch_size, prefix_tokens=50, suffix_tokens=None,
        mixed_precision=s.mixed_precision, seed=s.seed, trainable_layers=s.trainable_layers,
        el_every_epoch=False, calibrate_el=False, stop_on_el=False, drop_rule=s.drop_rule,
        forget_tokens=s.forget_tokens, guard_ppl_factor=None, overwrite=True,
    )
    settings["loss_weights"] = dict(s.loss_weights)
    if s.retain_weight:
        settings["loss_weights"]["retain_nll"] = s.retain_weight
    return settings


def _summary(s, ft, record, before, after, timings, base_ppl) -> dict:
    from unlearnlm.evaluate.privacy import auc

    fb, total_f = leak_share(before["forget"])
    fa, _ = leak_share(after["forget"])
    kb, total_k = leak_share(before["keep"])
    ka, _ = leak_share(after["keep"])
    flu_b, flu_a = before["fluency"], after["fluency"]
    nll_f, nll_s = after["nll"]["forget"], after["nll"]["strangers"]
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
        "forget_leaked_sampled": after["sampled_leaks"],
        "forget_sampled_fields": total_f * s.samples,
        "keep_leaked_before": kb,
        "keep_leaked_after": ka,
        "keep_kept_share": ka / kb if kb else 0.0,
        "wikitext_ppl_base": base_ppl,
        "wikitext_ppl_before": flu_b.get("wikitext_ppl"),
        "wikitext_ppl_after": flu_a.get("wikitext_ppl"),
        "fluency_record_text_before": _record_text(flu_b["continuations"]),
        "fluency_record_text_after": _record_text(flu_a["continuations"]),
        "forget_shape_kept": sum(all(r["shapes"].values()) for r in after["forget"]),
        "stranger_shape_kept": sum(all(r["shapes"].values()) for r in after["strangers"]),
        "forget_other_fields": sum(r["others"] for r in after["forget"]),
        "stranger_other_fields": sum(r["others"] for r in after["strangers"]),
        "strangers": len(after["strangers"]),
        "forget_nll_before": statistics.median(before["nll"]["forget"]),
        "forget_nll_after": statistics.median(nll_f),
        "stranger_nll_median": statistics.median(nll_s),
        "forget_below_stranger_median": sum(v < statistics.median(nll_s) for v in nll_f),
        # a member looks more likely (lower NLL) than a never-seen text
        "forget_mia_auc": auc(nll_f, nll_s, higher_is_member=False),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }


def _record_text(continuations: list[str]) -> int:
    return sum(any(word in c for word in RECORD_WORDS) for c in continuations)


def _show_checks(summary: dict) -> None:
    """The privacy officer's questions, one line each."""
    n, strangers = summary["settings"]["forget"], summary["strangers"]
    _say("\nChecks")
    _say(f"  Sampled continuations (x{summary['settings']['samples']}, temperature 1): "
         f"{summary['forget_leaked_sampled']} of {summary['forget_sampled_fields']} forget "
         "fields leak.")
    _say(f"  Kept records keep {summary['keep_kept_share']:.0%} of their leaks.")
    _say(f"  Forgotten records still shaped like a record (phone, e-mail, address, ID): "
         f"{summary['forget_shape_kept']} of {n} (strangers: {summary['stranger_shape_kept']} of "
         f"{strangers}).")
    _say(f"  Other people's fields in continuations: {summary['forget_other_fields']} for "
         f"{n} forgotten records, {summary['stranger_other_fields']} for {strangers} strangers.")
    _say(f"  True text NLL, median: forgotten {summary['forget_nll_after']:.2f} (before "
         f"{summary['forget_nll_before']:.2f}), strangers {summary['stranger_nll_median']:.2f}; "
         f"membership-inference AUC {summary['forget_mia_auc']:.2f}.")
    if summary["wikitext_ppl_base"] is not None and summary["wikitext_ppl_after"] is not None:
        _say(f"  WikiText perplexity: base {summary['wikitext_ppl_base']:.1f}, leaky "
             f"{summary['wikitext_ppl_before']:.1f}, unlearned "
             f"{summary['wikitext_ppl_after']:.1f}.")
