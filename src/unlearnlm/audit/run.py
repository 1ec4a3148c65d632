"""``audit()``: every attack on the unlearned model (and on the original), scored, in audit.json.

1. Read the forget set, the never-seen texts and the attacks' texts; check the attack names
   (before any model loads, so bad input fails fast and writes nothing).
2. For the unlearned model and, when given, the original: score both sets with no attack
   (greedy from the prefix), under each decoding attack, and after each attack on the weights
   (a changed copy, scored like the model itself, then dropped).
3. The table (``lines``): per attack and score, before unlearning (the original, no attack),
   after unlearning, after the attack, the original under the same attack, the never-seen texts
   under the attack, and the share of what unlearning removed that the attack brought back.
4. ``audit.json`` in ``out``, written atomically.

``relearn-half`` trains on one half of the forget set (seeded) and every line of it is scored on
the other half, the same texts before and after.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import time
from pathlib import Path

from unlearnlm.audit import attacks, scoring
from unlearnlm.audit.decoding import TextSet
from unlearnlm.audit.settings import (
    ATTACKS,
    QUANT_ATTACKS,
    WEIGHT_ATTACKS,
    AuditSettings,
    attack_names,
)
from unlearnlm.data.records import record_fields
from unlearnlm.data.texts import Record, read_records, split_records, texts_sha256
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.interface import LM
from unlearnlm.rundir import environment_versions, write_json

log = logging.getLogger(__name__)
RELEARN_TEXTS = 64  # unrelated or related texts read for relearning (steps x batch is 40)


def read_inputs(s: AuditSettings) -> dict:
    """Every text the audit needs, read and checked before a model loads."""
    from unlearnlm.data.eval_sets import wikipedia_paragraphs
    from unlearnlm.evaluate.suite import extraction_nonmembers

    forget = read_records(s.forget, role="forget")
    names = attack_names(s.attacks, related=bool(s.related), forget_count=len(forget))
    inputs: dict = {"forget": forget, "attacks": names}
    if s.nonmember:
        nonmember = read_records(s.nonmember, role="nonmember")
        inputs["nonmember"] = nonmember[: s.nonmember_limit] if s.nonmember_limit else nonmember
    else:
        inputs["nonmember"] = extraction_nonmembers(s.nonmember_limit)
    if "relearn-related" in names:
        inputs["related"] = read_records(s.related, role="related")[:RELEARN_TEXTS]
    if "relearn-unrelated" in names:
        inputs["unrelated"] = (read_records(s.unrelated, role="unrelated")[:RELEARN_TEXTS]
                               if s.unrelated else
                               [Record(f"wiki-{i}", t) for i, t in
                                enumerate(wikipedia_paragraphs(RELEARN_TEXTS, s.seed))])
    if "relearn-half" in names:
        order = [r.id for r in forget]
        random.Random(s.seed).shuffle(order)
        inputs["halves"] = {"train": sorted(order[: len(order) // 2]),
                            "scored": sorted(order[len(order) // 2 :])}
    return inputs


def text_set(records: list[Record], tokenizer, s: AuditSettings, role: str) -> TextSet:
    samples = split_records(records, tokenizer, s.prefix_tokens, s.suffix_tokens, role=role)
    return TextSet(samples, [record_fields(r.text) for r in records])


def _relearn_texts(attack: str, inputs: dict, forget: TextSet, tokenizer,
                   s: AuditSettings) -> list[list[int]]:
    if attack == "relearn-half":
        train = set(inputs["halves"]["train"])
        return [t.input_ids[: s.relearn_tokens] for t in forget.samples if t.id in train]
    texts = [r.text for r in inputs["related" if attack == "relearn-related" else "unrelated"]]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [list(ids)[: s.relearn_tokens] for ids in encoded]


def _attacked(attack: str, lm: LM, inputs: dict, forget: TextSet, s: AuditSettings):
    """The changed copy of the model and what the attack did (losses, bits)."""
    if attack in QUANT_ATTACKS:
        bits = QUANT_ATTACKS[attack]
        model = attacks.quantised(lm.model, bits, s.group_size)
        return model, {"bits": bits, "group_size": s.group_size if bits == 4 else None}
    sequences = _relearn_texts(attack, inputs, forget, lm.tokenizer, s)
    model, losses = attacks.relearned(lm.model, sequences, steps=s.relearn_steps,
                                      lr=s.relearn_lr, batch_size=s.relearn_batch_size,
                                      seed=s.seed, pad_token_id=lm.pad_token_id)
    return model, {"texts": len(sequences), "losses": losses}


def audit_model(lm: LM, inputs: dict, s: AuditSettings, role: str) -> tuple[dict, dict]:
    """Every attack on one model: per attack, the scores of both sets; and what each weight
    attack did."""
    forget = text_set(inputs["forget"], lm.tokenizer, s, "forget")
    nonmember = text_set(inputs["nonmember"], lm.tokenizer, s, "nonmember")
    results, details = {}, {}
    for attack in ["none", *inputs["attacks"]]:
        clock = time.perf_counter()
        log.info("  %s model: %s", role, attack if attack != "none" else "no attack")
        if attack in WEIGHT_ATTACKS:
            model, details[attack] = _attacked(attack, lm, inputs, forget, s)
            scored = (forget.subset(set(inputs["halves"]["scored"]))
                      if attack == "relearn-half" else forget)
            results[attack] = scoring.score(LM(model, lm.tokenizer), scored, nonmember, "none",
                                            s, weights=True)
            del model
            gc.collect()
        else:
            results[attack] = scoring.score(lm, forget, nonmember, attack, s,
                                            weights=attack == "none")
        results[attack]["seconds"] = round(time.perf_counter() - clock, 1)
    return results, details


def _metrics(attack: str, results: dict) -> list[str]:
    rows = results[attack]["forget"]
    names = [m for m in ("el", "ma", "bleu", "leaked") if scoring.mean_of(rows, m) is not None]
    return names + (["mia_auc"] if attack == "none" or attack in WEIGHT_ATTACKS else [])


def _value(result: dict | None, metric: str, ids: set[str] | None) -> float | None:
    if result is None:
        return None
    if metric == "mia_auc":
        return scoring.mia_auc(result, ids)
    return scoring.mean_of(scoring.subset(result["forget"], ids), metric)


def table_lines(results: dict[str, dict], attack_list: list[str], inputs: dict) -> list[dict]:
    """One line per attack and score (see the module docstring)."""
    unlearned, original = results["unlearned"], results.get("original")
    lines = []
    for attack in ["none", *attack_list]:
        ids = set(inputs["halves"]["scored"]) if attack == "relearn-half" else None
        for metric in _metrics(attack, unlearned):
            before = _value(original and original["none"], metric, ids)
            after = _value(unlearned["none"], metric, ids)
            line = {"attack": attack, "metric": metric, "before": before, "after": after}
            if attack != "none":
                attacked = _value(unlearned[attack], metric, ids)
                line.update(attacked=attacked,
                            original_attacked=_value(original and original[attack], metric,
                                                     ids),
                            never_seen=_never_seen(unlearned[attack], metric),
                            recovered=_recovered(before, after, attacked))
            lines.append(line)
    return lines


def _never_seen(result: dict, metric: str) -> float | None:
    if metric == "mia_auc":
        return 0.5  # chance, by construction
    return scoring.mean_of(result["nonmember"], metric)


def _recovered(before: float | None, after: float | None, attacked: float | None) -> float | None:
    """(after the attack - after) / (before - after): the share of what unlearning removed that
    the attack brought back (None when unlearning removed nothing of this score)."""
    if None in (before, after, attacked) or before - after <= 1e-9:
        return None
    return (attacked - after) / (before - after)


def verdicts(results: dict, inputs: dict, s: AuditSettings) -> dict:
    """Per model and attack: the yardstick rule (``scoring.yardstick``)."""
    out = {}
    for role, per_attack in results.items():
        out[role] = {}
        for attack, result in per_attack.items():
            ids = set(inputs["halves"]["scored"]) if attack == "relearn-half" else None
            out[role][attack] = scoring.yardstick(scoring.subset(result["forget"], ids),
                                                  result["nonmember"], s.yardstick_quantile,
                                                  s.yardstick_margin)
    return out


def findings(verdict: dict) -> dict:
    """What the attacks found on the unlearned model, in a few words: what is remembered with
    no attack, and the attacks under which more comes back (more fields leak, or the attack finds
    something where no attack found nothing)."""
    unlearned = verdict["unlearned"]
    base = unlearned["none"]

    def more(v: dict) -> bool:
        return (v["leaked"] or 0) > (base["leaked"] or 0) or (v["finds"] and not base["finds"])

    back = [a for a, v in unlearned.items() if a != "none" and more(v)]
    if base["leaked"]:
        first = f"{base['leaked']} private fields leak without any attack"
    elif base["finds"]:
        first = (f"{len(base['remembered'])} of {base['texts']} forget texts are still remembered "
                 "without any attack (a score above the never-seen texts')"
                 + (" though no private field leaks" if base["leaked"] == 0 else ""))
    else:
        first = "nothing is remembered without an attack"
    last = f"more comes back under: {', '.join(back)}" if back else "no attack brings more back"
    return {"without_attack": "finds" if base["finds"] else "nothing", "comes_back_under": back,
            "summary": f"{first}; {last}"}


def audit_record(s: AuditSettings, inputs: dict, results: dict, details: dict) -> dict:
    """What ``audit.json`` holds, from the scores of every model under every attack."""
    verdict = verdicts(results, inputs, s)
    return {
        "settings": s.to_dict(), "versions": environment_versions(),
        "attacks": {a: {"summary": ATTACKS[a], "kind": "weights" if a in WEIGHT_ATTACKS
                        else "decoding"} for a in inputs["attacks"]},
        "data": {"forget": len(inputs["forget"]), "nonmember": len(inputs["nonmember"]),
                 "records": all(record_fields(r.text) for r in inputs["forget"]),
                 "forget_sha256": texts_sha256([r.text for r in inputs["forget"]]),
                 "nonmember_sha256": texts_sha256([r.text for r in inputs["nonmember"]]),
                 "halves": inputs.get("halves")},
        "details": details, "results": results, "verdicts": verdict,
        "lines": table_lines(results, inputs["attacks"], inputs),
        "findings": findings(verdict),
    }


def output_dir(s: AuditSettings) -> Path:
    """``out``, checked before any work: a directory, empty (or ``overwrite``), and neither a
    model folder nor one holding a model (a folder inside the model's, such as
    ``RUN_DIR/audit``, is fine: the audit writes only its own files)."""
    out = Path(s.out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UnlearnError(f"output {out} exists and is a file; give a directory path")
    if out.is_dir() and any(out.iterdir()) and not s.overwrite:
        raise UnlearnError(f"output directory {out} is not empty; choose another --out or pass "
                           "--overwrite")
    for spec in (s.model, s.original):
        path = Path(str(spec or "")).expanduser()
        if spec and path.exists():
            model_dir = path.resolve() if path.is_dir() else path.resolve().parent
            if out == model_dir or out in model_dir.parents:
                raise UnlearnError(f"output directory {out} holds the model {spec}; give an --out "
                                   "such as a folder inside the model's (RUN_DIR/audit)")
    return out


# settings that change what is scored (the rest: where it goes, and how it is judged)
_NOT_SCORED = ("model", "out", "overwrite", "reuse_original", "attacks", "yardstick_quantile",
               "yardstick_margin")


def reused_original(s: AuditSettings, inputs: dict) -> tuple[dict, dict]:
    """The original model's scores from ``s.reuse_original``, checked to be what this audit
    would compute: the same original, texts and settings, and every attack of this one."""
    where = f"--reuse-original {s.reuse_original}"
    path = Path(s.reuse_original)
    path = path / "audit.json" if path.is_dir() else path
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or not {"settings", "results", "data"} <= set(record):
        raise UnlearnError(f"{where}: no audit.json there that `unlearnlm audit` wrote; give "
                           "one, or its folder")
    if "original" not in record["results"] or not s.original:
        raise UnlearnError(f"{where} holds no scores of an original model, or no --original is "
                           "given; give both, or leave --reuse-original out")
    same = Path(str(record["settings"]["original"])).resolve() == Path(s.original).resolve()
    theirs = {k: v for k, v in record["settings"].items() if k not in _NOT_SCORED}
    ours = {k: v for k, v in s.to_dict().items() if k not in _NOT_SCORED}
    texts = (texts_sha256([r.text for r in inputs["forget"]]),
             texts_sha256([r.text for r in inputs["nonmember"]]))
    missing = [a for a in ["none", *inputs["attacks"]] if a not in record["results"]["original"]]
    if not same or theirs != ours or texts != (record["data"].get("forget_sha256"),
                                               record["data"].get("nonmember_sha256")):
        differ = [k for k in ours if theirs.get(k) != ours[k]] or ["the original or the texts"]
        raise UnlearnError(f"{where} scored other things ({', '.join(differ)} differ); give the "
                           "same --original, texts and settings, or leave --reuse-original out")
    if missing:
        raise UnlearnError(f"{where} lacks the attacks {', '.join(missing)}; run them there "
                           "first, or leave --reuse-original out")
    keep = ["none", *inputs["attacks"]]
    return ({a: record["results"]["original"][a] for a in keep},
            {a: d for a, d in record["details"].get("original", {}).items() if a in keep})


def audit(s: AuditSettings) -> dict:
    """Run the audit (see the module docstring); returns what ``audit.json`` holds."""
    s.require()
    out = output_dir(s)
    start = time.perf_counter()
    inputs = read_inputs(s)
    results, details = {}, {}
    if s.reuse_original:
        results["original"], details["original"] = reused_original(s, inputs)
    for role, spec in (("unlearned", s.model), ("original", s.original)):
        if spec and role not in results:
            log.info("Auditing the %s model %s", role, spec)
            lm = LM.load(spec)
            results[role], details[role] = audit_model(lm, inputs, s, role)
            del lm
            gc.collect()
    results = {role: results[role] for role in ("unlearned", "original") if role in results}
    record = audit_record(s, inputs, results, details)
    record["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "audit.json", record)
    return record


def summary_lines(record: dict) -> list[str]:
    """The table as text lines: "attack, score: before X, after Y, after the attack Z"."""
    out = []
    for line in record["lines"]:
        cells = [f"before unlearning {_fmt(line['before'])}", f"after {_fmt(line['after'])}"]
        if line["attack"] != "none":
            cells.append(f"after the attack {_fmt(line['attacked'])}")
            cells.append(f"never-seen texts {_fmt(line['never_seen'])}")
            if line["recovered"] is not None:
                cells.append(f"recovered {line['recovered']:.0%}")
        out.append(f"{line['attack']:18s} {line['metric']:8s} " + ", ".join(cells))
    out.append(f"Finding: {record['findings']['summary']}.")
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.3f}"
