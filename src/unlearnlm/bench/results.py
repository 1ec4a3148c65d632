"""The bench's results: one row of numbers per model, the paper's claims checked, four files.

- ``results.json``: settings, versions, data, the leaky and retain models, every row, the claims.
- ``results.csv``: the rows, one column per number.
- ``results.md``: a table shaped like the paper's Table 1 (rows: the leaky model "before", the
  retain model, then each method) and the claims, each PASS or FAIL on these numbers.
- ``forgetting_vs_utility.png``: EL10 on the forget set against WikiText perplexity relative to
  the leaky model, one labelled point per model.

With ``--audit``, ``results.json`` and ``results.md`` also hold, per method and attack, how many
forget texts the attack extracts from the method's model (``audit.scoring.yardstick``), and the
same for the leaky model.

An inference-time baseline's row (``bench.guards``: no training, the leaky model behind a guard)
also holds the MIA AUC of the weights behind it (the leaky model's, unchanged) and its cost per
generated token against the plain model's; the table then has these three more columns. The
audit attacks weights, so it skips these rows: their weights are the leaky model's.

A method "forgets" when its mean EL10 and MA on the forget set are at most the leaky model's on
never-seen text (the non-members): the yardstick of Jang et al. 2023, the model's own scores on
data it never saw, measured with the same metric code.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import asdict
from pathlib import Path

from unlearnlm.data.eval_sets import CHOICE_TASKS, DIALOGUE_SETS
from unlearnlm.evaluate.privacy import SIGNALS
from unlearnlm.rundir import atomic_path

log = logging.getLogger(__name__)

DOWNSTREAM = ("lambada", *CHOICE_TASKS)
PPL_SLACK = 1.10  # ICU keeps perplexity within 10% of the leaky model's
ENTROPY_SHARE = 0.90  # ... and entropy at least 90% of it
LABELS = {"leaky": "leaky (before)", "retain": "retain (never saw the forget set)"}
# (row key, table header, format): the paper's Table 1 columns, then ours
TABLE = (
    ("el10", "EL10 %", "pct"), ("ma", "MA %", "pct"), ("bertscore", "BERT F1 %", "pct"),
    ("entropy", "entropy", "3f"), ("cls_acc", "cls acc %", "pct"), ("dialogue_f1", "dia F1", "pct"),
    ("ppl_pile", "Pile PPL", "ppl"), ("ppl_wikitext", "Wiki PPL", "ppl"),
    ("mia_auc", "MIA AUC", "2f"), ("epochs", "epochs", "int"),
    ("wall_time_s", "wall time s", "int"),
)
# ... and, when the table has an inference-time baseline (bench.guards), what it leaves in the
# weights and what it costs a generated token
GUARD_TABLE = (
    ("weights_mia_auc", "weights MIA", "2f"), ("ms_per_token", "gen ms/token", "1f"),
    ("cost_ratio", "x plain", "2f"),
)
CSV_COLUMNS = (
    "name", "role", "el10", "ma", "bleu", "bertscore", "entropy", "cls_acc", "dialogue_f1",
    "ppl_pile", "ppl_wikitext", "mia_auc", *(f"mia_auc_{s}" for s in SIGNALS), "share_forgotten",
    "nonmember_el10", "nonmember_ma", *(f"acc_{t}" for t in DOWNSTREAM),
    *(f"f1_{d}" for d in DIALOGUE_SETS), "epochs", "wall_time_s", "stopped", "weights_mia_auc",
    "ms_per_token", "plain_ms_per_token", "cost_ratio", "prompt_tokens", "withheld_forget",
    "withheld_nonmember",
)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _aggregate(tasks: dict, name: str) -> dict:
    return tasks.get(name, {}).get("aggregate", {}) or {}


def metrics_row(tasks: dict) -> dict:
    """The aggregate numbers of one ``eval.json``'s tasks (None where a task was not run)."""
    forget, other = _aggregate(tasks, "forget"), _aggregate(tasks, "nonmember")
    row = {"el10": forget.get("el"), "ma": forget.get("ma"), "bleu": forget.get("bleu"),
           "bertscore": forget.get("bertscore"), "entropy": forget.get("entropy"),
           "nonmember_el10": other.get("el"), "nonmember_ma": other.get("ma"),
           "share_forgotten": _aggregate(tasks, "verdict").get("share_forgotten"),
           "ppl_pile": _aggregate(tasks, "ppl_pile").get("perplexity"),
           "ppl_wikitext": _aggregate(tasks, "ppl_wikitext").get("perplexity")}
    accuracies = {t: _aggregate(tasks, t)["acc"] for t in DOWNSTREAM if t in tasks}
    row.update({f"acc_{t}": v for t, v in accuracies.items()})
    row["cls_acc"] = _mean(list(accuracies.values()))
    f1 = {d: _aggregate(tasks, d)["f1"] for d in DIALOGUE_SETS if d in tasks}
    row.update({f"f1_{d}": v for d, v in f1.items()})
    row["dialogue_f1"] = _mean(list(f1.values()))
    aucs = _aggregate(tasks, "mia")
    row.update({f"mia_auc_{s}": aucs.get(s) for s in SIGNALS})
    row["mia_auc"] = max(aucs.values()) if aucs else None
    return row


def build_rows(models: dict, runs: dict, evals: dict) -> list[dict]:
    """Leaky, retain, then one row per method: metrics + epochs, wall time, stop reason; an
    inference-time baseline (``bench.guards``) has no epochs but its generation cost. Every row
    also says the MIA AUC of its weights: its own, except a baseline's, which are the leaky
    model's."""
    rows = []
    for name in ("leaky", "retain"):
        folder, record = models[name]
        rows.append({"name": name, "role": name, "model_dir": str(folder),
                     **metrics_row(evals[name]["tasks"]), "epochs": None, "wall_time_s": None,
                     "stopped": None, "finetune_epochs": len(record["epochs"]),
                     "finetune_suffix_accuracy": record["suffix_accuracy"]})
    for row in rows:
        row["weights_mia_auc"] = row["mia_auc"]
    for name, run in runs.items():
        metrics = metrics_row(evals[name]["tasks"])
        if "guard" in run:
            guard = run["guard"]
            rows.append({"name": name, "role": "guard", "model_dir": str(models["leaky"][0]),
                         **metrics, "weights_mia_auc": rows[0]["mia_auc"], "epochs": None,
                         "wall_time_s": None, "stopped": None, **guard["cost"],
                         **guard["summary"], **_withheld(guard)})
            continue
        record = run["record"]
        if "dp" in record:  # bench.dp: fine-tuned under DP-SGD, nothing unlearned
            rows.append({"name": name, "role": "dp", "model_dir": str(run["folder"]),
                         **metrics, "weights_mia_auc": metrics["mia_auc"],
                         "epochs": len(record["epochs"]),
                         "wall_time_s": run["wall_time_s"], "stopped": None,
                         "finetune_suffix_accuracy": record["suffix_accuracy"],
                         "dp": record["dp"]})
            continue
        if "sisa" in run:  # bench.sisa: a SISA ensemble after an exact deletion
            rows.append({"name": name, "role": "sisa", "model_dir": run["folder"], **metrics,
                         "weights_mia_auc": metrics["mia_auc"], "epochs": None,
                         "wall_time_s": run["wall_time_s"], "stopped": None,
                         "sisa": run["sisa"]})
            continue
        rows.append({"name": name, "role": "method", "model_dir": record["config"]["out"],
                     **metrics, "weights_mia_auc": metrics["mia_auc"],
                     "epochs": record["stopped"]["epoch"],
                     "wall_time_s": run["wall_time_s"], "resumed": run["resumed"],
                     "stopped": record["stopped"]["reason"], "thresholds": record["thresholds"]})
    return rows


def _withheld(guard: dict) -> dict:
    """The filter's withheld shares of the timed generations (``bench.guards``), else nothing."""
    counts = guard.get("withheld")
    if not counts:
        return {}
    return {f"withheld_{side}": counts[side] / counts[f"{side}_prompts"]
            for side in ("forget", "nonmember") if counts[f"{side}_prompts"]}


# --- the paper's claims ------------------------------------------------------------------------


def forgetting_yardstick(rows: list[dict]) -> dict | None:
    """The leaky model's mean EL10 and MA on non-member text, or None when not measured."""
    leaky = next(r for r in rows if r["name"] == "leaky")
    if leaky.get("nonmember_el10") is None or leaky.get("nonmember_ma") is None:
        return None
    return {"el10": leaky["nonmember_el10"], "ma": leaky["nonmember_ma"]}


def _result(claim: str, measured: str, passed: bool | None) -> dict:
    verdict = "NOT CHECKED" if passed is None else "PASS" if passed else "FAIL"
    return {"claim": claim, "measured": measured, "result": verdict}


def _lacking(row: dict | None, keys: tuple[str, ...]) -> str:
    if row is None:
        return "not run"
    missing = [k for k in keys if row.get(k) is None]
    return f"not measured: {', '.join(missing)}" if missing else ""


def _forgets(name: str, row: dict | None, yardstick: dict | None) -> dict:
    claim = (f"{name.upper()} forgets: mean EL10 and MA on the forget set at most the leaky "
             "model's on never-seen text")
    lacking = _lacking(row, ("el10", "ma")) or ("" if yardstick else "no non-member scores")
    if lacking:
        return _result(claim, lacking, None)
    measured = (f"EL10 {_pct(row['el10'])} % (yardstick {_pct(yardstick['el10'])} %), "
                f"MA {_pct(row['ma'])} % (yardstick {_pct(yardstick['ma'])} %)")
    return _result(claim, measured,
                   row["el10"] <= yardstick["el10"] and row["ma"] <= yardstick["ma"])


def _ratios(row: dict, leaky: dict) -> dict[str, float]:
    """Pile / WikiText perplexity and entropy, each as a multiple of the leaky model's."""
    out = {}
    for key in ("ppl_pile", "ppl_wikitext", "entropy"):
        if row.get(key) is not None and leaky.get(key):
            out[key] = row[key] / leaky[key]
    return out


def _ratio_text(ratios: dict[str, float]) -> str:
    names = {"ppl_pile": "Pile PPL", "ppl_wikitext": "WikiText PPL", "entropy": "entropy"}
    return ", ".join(f"{names[k]} x{v:.3g}" for k, v in ratios.items()) + " of the leaky model's"


def _ga_damages(row: dict | None, leaky: dict) -> dict:
    claim = (f"GA damages the model: Pile or WikiText PPL above {PPL_SLACK:.2f} x the leaky "
             f"model's, or entropy under {ENTROPY_SHARE:.2f} x (paper: PPL > 10,000)")
    if row is None:
        return _result(claim, "not run", None)
    ratios = _ratios(row, leaky)
    if "entropy" not in ratios or not {"ppl_pile", "ppl_wikitext"} & set(ratios):
        return _result(claim, "not measured: perplexity or entropy", None)
    damaged = (any(ratios.get(k, 0.0) > PPL_SLACK for k in ("ppl_pile", "ppl_wikitext"))
               or ratios["entropy"] < ENTROPY_SHARE)
    return _result(claim, _ratio_text(ratios), damaged)


def _icu_keeps(row: dict | None, leaky: dict) -> dict:
    claim = (f"ICU keeps the model: Pile and WikiText PPL within {PPL_SLACK:.2f} x the leaky "
             f"model's and entropy at least {ENTROPY_SHARE:.2f} x")
    if row is None:
        return _result(claim, "not run", None)
    ratios = _ratios(row, leaky)
    if len(ratios) < 3:
        return _result(claim, "not measured: Pile PPL, WikiText PPL and entropy all needed", None)
    kept = (ratios["ppl_pile"] <= PPL_SLACK and ratios["ppl_wikitext"] <= PPL_SLACK
            and ratios["entropy"] >= ENTROPY_SHARE)
    return _result(claim, _ratio_text(ratios), kept)


def _icu_beats_ga(icu: dict | None, ga: dict | None) -> dict:
    claim = "ICU ends with a lower WikiText perplexity than GA"
    if icu is None or ga is None:
        return _result(claim, "not run", None)
    if icu.get("ppl_wikitext") is None or ga.get("ppl_wikitext") is None:
        return _result(claim, "not measured: ppl_wikitext", None)
    measured = f"ICU {_ppl(icu['ppl_wikitext'])}, GA {_ppl(ga['ppl_wikitext'])}"
    return _result(claim, measured, icu["ppl_wikitext"] < ga["ppl_wikitext"])


def check_claims(rows: list[dict]) -> list[dict]:
    """Our reading of the paper's claims, tested on these rows: PASS, FAIL or NOT CHECKED."""
    by_name = {r["name"]: r for r in rows}
    leaky, yardstick = by_name["leaky"], forgetting_yardstick(rows)
    icu, ga = by_name.get("icu"), by_name.get("ga")
    return [_forgets("ga", ga, yardstick), _ga_damages(ga, leaky),
            _forgets("icu", icu, yardstick), _icu_keeps(icu, leaky), _icu_beats_ga(icu, ga)]


# --- formatting --------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _ppl(value: float) -> str:
    if not math.isfinite(value):
        return "inf"
    return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def _cell(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return _pct(value)
    if kind == "ppl":
        return _ppl(value)
    if kind == "int":
        return f"{value:.0f}"
    return f"{value:.{kind[0]}f}"


def table_markdown(rows: list[dict]) -> str:
    """The Table-1-shaped markdown table of the rows (with ``GUARD_TABLE``'s columns when a row
    is an inference-time baseline)."""
    columns = TABLE + (GUARD_TABLE if any(r["role"] == "guard" for r in rows) else ())
    lines = ["| method | " + " | ".join(h for _, h, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(row.get(key), kind) for key, _, kind in columns]
        lines.append(f"| {LABELS.get(row['name'], row['name'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _nonmembers_scored(s, data: dict) -> int:
    """``evaluate`` caps the non-members at ``limit`` as well."""
    count = len(data["nonmember"])
    return count if s.limit is None else min(count, s.limit)


def _notes(s, rows: list[dict], data: dict, models: dict) -> list[str]:
    leaky = models["leaky"][1]
    drop = "median" if s.calibration_quantile == 0.5 else f"quantile {s.calibration_quantile:g}"
    stop = "mean" if s.calibration_stop == "mean" else drop
    included = [t for t in DOWNSTREAM if rows[0].get(f"acc_{t}") is not None]
    cls = (f"all {len(DOWNSTREAM)} downstream tasks" if len(included) == len(DOWNSTREAM)
           else f"{len(included)} of the {len(DOWNSTREAM)} downstream tasks: "
           + (", ".join(included) or "none"))
    limit = "every item" if s.limit is None else f"at most {s.limit} items"
    return [
        f"- Leaky model: {s.model} fine-tuned on {len(data['forget'])} forget + "
        f"{len(data['retain'])} retain texts, suffix token accuracy "
        f"{leaky['suffix_accuracy']:.3f} after {len(leaky['epochs'])} epochs. Retain model: the "
        f"same on the {len(data['retain'])} retain texts only.",
        f"- Every method starts from the leaky model: lr {s.lr:g}, at most {s.max_epochs} epochs, "
        f"batch {s.batch_size}, drop rule '{s.drop_rule}', {len(data['pool'])} pool texts, "
        f"thresholds calibrated on {len(data['calibration'])} never-seen texts (drop test: their "
        f"{drop} BLEU and BERTScore; stop: their {stop} EL10 and MA).",
        f"- Evaluation: {limit} per task. cls acc % = mean accuracy over {cls}; dia F1 = mean "
        f"unigram F1 (x100) over the dialogue sets run; entropy in bits of one generation.",
        f"- MIA AUC: the highest of {len(SIGNALS)} attacks ({', '.join(SIGNALS)}), forget set vs "
        f"{_nonmembers_scored(s, data)} never-seen texts; 0.5 = chance.",
        *[_dp_note(row) for row in rows if row["role"] == "dp"],
        *[_sisa_note(row) for row in rows if row["role"] == "sisa"],
        *_guard_notes(s, rows),
    ]


def _dp_note(row: dict) -> str:
    dp = row["dp"]
    return (f"- {row['name']}: nothing unlearned; the leaky model's fine-tuning (same texts, "
            f"learning rate, epochs) under DP-SGD: epsilon {dp['epsilon_spent']:.2f} spent of "
            f"{dp['target_epsilon']:g} at delta {dp['delta']:g}, noise multiplier "
            f"{dp['noise_multiplier']:.2f}, clipping at {dp['max_grad_norm']:g}, "
            f"{dp['steps']} steps; suffix token accuracy {row['finetune_suffix_accuracy']:.3f}.")


def _sisa_note(row: dict) -> str:
    sisa = row["sisa"]
    shards = ", ".join(f"{k} from slice {r}" for k, r in sisa["retrained_from_slice"].items())
    return (f"- {row['name']}: nothing unlearned from the leaky model; the base model trained "
            f"the SISA way on forget + retain ({sisa['shards']} shards of {sisa['shard_sizes']}"
            f" texts, {sisa['slices']} slices, {sisa['epochs']} epochs a stage, LoRA rank "
            f"{sisa['lora_rank']}, lr {sisa['lr']:g}; {sisa['train_seconds']:.0f} s), then the "
            f"{sisa['texts_deleted']} forget texts deleted exactly by retraining shards "
            f"{shards} ({sisa['deletion_seconds']:.0f} s, the row's wall time). Scored as the "
            "mean of its shards' distributions; not audited.")


def _guard_notes(s, rows: list[dict]) -> list[str]:
    """What the inference-time baselines' rows mean (``bench.guards``), when there are any."""
    guards = [r for r in rows if r["role"] == "guard"]
    if not guards:
        return []
    first = guards[0]
    notes = [
        f"- Inference-time baselines ({', '.join(r['name'] for r in guards)}; "
        "docs/methods.md): no training, the leaky model behind a guard, scored by the same "
        "suite. MIA AUC is measured through the guard; weights MIA is the AUC of the weights "
        "behind it (for these rows the leaky model's, unchanged; for the others their own). "
        f"gen ms/token: greedy generation of {first['new_tokens']} tokens from "
        f"{first['prompts']} forget and never-seen prefixes in one batch, guarded; x plain: "
        "that time over the leaky model's own, measured one after the other in the same run."]
    prompts = [f"{r['name']} {r['prompt_tokens']}" for r in guards if "prompt_tokens" in r]
    if prompts:
        notes.append(f"- Prompt tokens before every input: {', '.join(prompts)} (guard-prompt: "
                     f"{s.guard_opening_tokens}-token openings; icul: {s.icul_examples} kept "
                     "texts whole after the forget prefixes).")
    for r in guards:
        if "withheld_forget" in r:
            notes.append(
                f"- {r['name']} ({r['ngram']}-token n-grams): withheld "
                f"{_pct(r['withheld_forget'])} % of the timed greedy continuations of forget "
                f"prefixes and {_pct(r.get('withheld_nonmember', 0.0))} % of never-seen ones "
                "(false alarms).")
    return notes


def results_markdown(results: dict, s, data: dict, models: dict) -> str:
    rows = results["rows"]
    parts = [f"# unlearnlm bench: {s.forget_set} on {s.model}", "", table_markdown(rows), "",
             *_notes(s, rows, data, models), "", "## The paper's claims, checked on these numbers",
             "", "| claim | measured | result |", "|---|---|---|"]
    parts += [f"| {c['claim']} | {c['measured']} | **{c['result']}** |" for c in results["claims"]]
    yardstick = results["forgetting_yardstick"]
    if yardstick:
        parts += ["", f"Forgetting yardstick: the leaky model's mean EL10 "
                  f"{_pct(yardstick['el10'])} % and MA {_pct(yardstick['ma'])} % on "
                  f"{_nonmembers_scored(s, data)} never-seen texts (Jang et al. 2023 set their "
                  "thresholds this way)."]
    if results.get("audit"):
        parts += ["", *audit_markdown(results["audit"])]
    parts += ["", "## Why each method stopped", ""]
    parts += [f"- {r['name']}: after epoch {r['epochs']}: {r['stopped']}"
              + (" (resumed after a kill; wall time counts the last part only)"
                 if r.get("resumed") else "") for r in rows if r["role"] == "method"]
    parts += [f"- {r['name']}: no training (an inference-time baseline)" for r in rows
              if r["role"] == "guard"]
    parts += [f"- {r['name']}: an exact deletion, no stopping rule (SISA)" for r in rows
              if r["role"] == "sisa"]
    return "\n".join(parts) + "\n"


def audit_summary(audits: dict | None) -> dict | None:
    """Per model (the leaky one first) and attack: texts remembered, fields leaked, finds."""
    if not audits:
        return None
    first = next(iter(audits.values()))
    summary = {"leaky": first["verdicts"]["original"]}
    summary.update({name: record["verdicts"]["unlearned"] for name, record in audits.items()})
    keep = ("remembered", "texts", "leaked", "finds")
    return {"models": {name: {attack: {k: (len(v[k]) if k == "remembered" else v[k])
                                       for k in keep} for attack, v in per_attack.items()}
                       for name, per_attack in summary.items()},
            "findings": {name: record["findings"]["summary"] for name, record in audits.items()},
            "settings": {k: first["settings"][k] for k in ("yardstick_quantile",
                                                           "yardstick_margin", "relearn_steps",
                                                           "relearn_lr", "group_size")}}


def audit_markdown(summary: dict) -> list[str]:
    """The audit as a table: a row per model, a column per attack."""
    attacks = list(summary["models"]["leaky"])
    lines = ["## The audit: forget texts remembered under each attack", "",
             "| model | " + " | ".join("no attack" if a == "none" else a for a in attacks) + " |",
             "|---|" + "---|" * len(attacks)]
    for name, per_attack in summary["models"].items():
        cells = []
        for attack in attacks:
            v = per_attack.get(attack)
            cell = f"{v['remembered']}/{v['texts']}" if v else "-"
            cells.append(f"**{cell}**" if v and v["finds"] else cell)
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    s = summary["settings"]
    lines += ["", f"A text is remembered when one of its scores passes the never-seen texts' "
              f"{s['yardstick_quantile']} quantile under the same attack by more than "
              f"{s['yardstick_margin']}, or a private field of it leaks; bold: the attack finds "
              f"something (a leak, or most texts remembered). Relearning: {s['relearn_steps']} "
              f"steps at lr {s['relearn_lr']}; 4-bit groups of {s['group_size']}. Per score and "
              "attack: audit/NAME/report.md.", ""]
    lines += [f"- {name}: {finding}" for name, finding in summary["findings"].items()]
    return lines


def results_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return buffer.getvalue()


def _label_lifts(ax, points: list[tuple[str, float, float]], gap: float = 9.0) -> list[float]:
    """Upward offsets (points) that keep the labels of nearby markers from printing on each
    other: from the lowest marker up, a label rises until no label placed before it sits within
    one line height and about its own width."""
    scale = 72.0 / ax.figure.dpi
    at = [tuple(v * scale for v in ax.transData.transform((x, y))) for _, x, y in points]
    order = sorted(range(len(points)), key=lambda i: at[i][1])
    placed: list[tuple[float, float, float]] = []  # left, right, baseline of each label
    lifts = [0.0] * len(points)
    for i in order:
        left, base = at[i]
        right = left + 5.0 * len(points[i][0]) + 5.0
        while any(left < r and start < right and abs(base + lifts[i] - b) < gap
                  for start, r, b in placed):
            lifts[i] += gap
        placed.append((left, right, base + lifts[i]))
    return lifts


def plot_forgetting_vs_utility(rows: list[dict], path: Path) -> Path | None:
    """EL10 (else MA) on the forget set vs WikiText (else Pile) PPL / the leaky model's."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x_key = "el10" if all(r.get("el10") is not None for r in rows) else "ma"
    y_key = "ppl_wikitext" if rows[0].get("ppl_wikitext") else "ppl_pile"
    points = [(r, r.get(x_key), r.get(y_key)) for r in rows]
    base = rows[0].get(y_key)
    if not base or any(x is None or y is None for _, x, y in points):
        log.warning("No forgetting-vs-utility plot: the forget task and a perplexity task "
                    "are both needed")
        return None
    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = {"leaky": ("s", "black"), "retain": ("D", "tab:green")}
    ratios = [min(y / base, 1e6) if math.isfinite(y) else 1e6 for _, _, y in points]
    for (row, x, _), ratio in zip(points, ratios):
        marker, colour = styles.get(row["name"], ("o", "tab:blue"))
        ax.scatter(100 * x, ratio, marker=marker, color=colour, zorder=3)
    if max(ratios) / max(min(ratios), 1e-9) > 20:
        ax.set_yscale("log")
    ax.autoscale_view()
    where = [(row["name"], 100 * x, ratio) for (row, x, _), ratio in zip(points, ratios)]
    for (name, x, y), lift in zip(where, _label_lifts(ax, where)):
        leader = {"arrowstyle": "-", "color": "grey", "linewidth": 0.5} if lift else None
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4 + lift), fontsize=8,
                    arrowprops=leader)
    ax.axhline(PPL_SLACK, color="grey", linestyle="--", linewidth=0.8,
               label=f"{PPL_SLACK:.2f} x the leaky model's perplexity")
    x_name = "EL10" if x_key == "el10" else "MA"
    ax.set_xlabel(f"{x_name} on the forget set, % (lower: forgot more)")
    ax.set_ylabel(f"{'WikiText' if y_key == 'ppl_wikitext' else 'Pile'} PPL / leaky model's")
    ax.set_title("Forgetting vs utility", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=120)
    return path


def write_results_files(out: Path, s, data: dict, models: dict, runs: dict,
                        evals: dict, audits: dict | None = None) -> dict:
    """Build the rows and claims and write the four result files; returns results.json's data."""
    from unlearnlm.data.texts import texts_sha256
    from unlearnlm.rundir import environment_versions, write_json, write_text_atomic

    rows = build_rows(models, runs, evals)
    files = {name: str(out / name) for name in
             ("results.json", "results.csv", "results.md", "forgetting_vs_utility.png")}
    results = {
        "settings": asdict(s),
        "versions": environment_versions(),
        "data": {role: {"n": len(records), "sha256": texts_sha256([r.text for r in records]),
                        "ids": [r.id for r in records] if role != "pool" else None}
                 for role, records in data.items()},
        "models": {name: {"path": str(folder), "finetune_epochs": len(record["epochs"]),
                          "suffix_accuracy": record["suffix_accuracy"],
                          "memorised": record["memorised"], "seconds": record.get("seconds")}
                   for name, (folder, record) in models.items()},
        "rows": rows,
        "forgetting_yardstick": forgetting_yardstick(rows),
        "claims": check_claims(rows),
        "audit": audit_summary(audits),
        "files": files,
    }
    if plot_forgetting_vs_utility(rows, out / "forgetting_vs_utility.png") is None:
        files.pop("forgetting_vs_utility.png")
    write_text_atomic(out / "results.csv", results_csv(rows))
    write_text_atomic(out / "results.md", results_markdown(results, s, data, models))
    write_json(out / "results.json", results)
    return results
