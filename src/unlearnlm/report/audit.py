"""The robustness audit as report blocks: a table and one plot, from ``audit.json``.

``audit_section`` adds the section to any report (``unlearnlm report`` puts it after the privacy
verdict when the run has an audit; ``unlearnlm audit`` writes a report of its own with it).
``check_verdict_section`` and ``check_utility_rows`` read the quick check that ends an unlearn run
(``check.json``), so that a run's report carries a verdict and perplexity before and after.
"""

from __future__ import annotations

from pathlib import Path

from unlearnlm.report import plots
from unlearnlm.report.plots import Report, fmt, write_report

METRIC_NAMES = {"el": "EL", "ma": "MA", "bleu": "BLEU", "leaked": "private fields leaked",
                "mia_auc": "MIA AUC (loss)"}


def _attack_label(attack: str) -> str:
    return "no attack (greedy)" if attack == "none" else attack


def _remembered_share(verdicts: dict | None, attack: str) -> float | None:
    v = (verdicts or {}).get(attack)
    return len(v["remembered"]) / v["texts"] if v and v["texts"] else None


def audit_table(report: Report, record: dict, key: str = "audit") -> None:
    """One line per attack and score: before unlearning, after, after the attack, the original
    under the attack, never-seen texts under the attack, the share recovered."""
    rows = []
    for line in record["lines"]:
        recovered = line.get("recovered")
        rows.append([_attack_label(line["attack"]), METRIC_NAMES.get(line["metric"],
                                                                     line["metric"]),
                     line["before"], line["after"], line.get("attacked"),
                     line.get("original_attacked"), line.get("never_seen"),
                     None if recovered is None else f"{recovered:.0%}"])
    report.table(["attack", "score", "before unlearning", "after", "after the attack",
                  "original under the attack", "never-seen texts under the attack",
                  "recovered"], rows, key=key)


def extraction_rows(record: dict) -> list[list]:
    """Per attack: forget texts remembered and fields leaked, on the original and the unlearned
    model, and whether the attack finds something on the unlearned one."""
    verdicts = record["verdicts"]
    rows = []
    for attack, v in verdicts["unlearned"].items():
        o = verdicts.get("original", {}).get(attack)
        rows.append([_attack_label(attack),
                     f"{len(o['remembered'])} of {o['texts']}" if o else None,
                     f"{len(v['remembered'])} of {v['texts']}", v["leaked"], v["finds"]])
    return rows


def audit_section(report: Report, record: dict, title: str = "Robustness audit") -> None:
    """The audit: what ran, the table, which attacks find something, and the plot."""
    s = record["settings"]
    report.heading(title)
    report.text(
        f"Attacks on the unlearned model {s['model']}" + (f" and on the original {s['original']}"
                                                          if s.get("original") else "")
        + f": {', '.join(record['attacks'])}. {record['data']['forget']} forget texts against "
        f"{record['data']['nonmember']} never-seen texts"
        + (" (personal records: leaked private fields are counted)." if record["data"]["records"]
           else ".") + f" Finding: {record['findings']['summary']}.")
    report.items([f"{name}: {a['summary']}" for name, a in record["attacks"].items()])
    audit_table(report, record)
    report.text("Per attack: forget texts remembered (a private field leaks, or a score passes "
                f"the never-seen texts' {s['yardstick_quantile']} quantile by more than "
                f"{s['yardstick_margin']}); the attack finds something when a field leaks or "
                "most texts are remembered. Leaked fields are counted over all texts; "
                "'recovered' is (after the attack - after) / (before - after).")
    report.table(["attack", "remembered, original", "remembered, unlearned", "fields leaked",
                  "finds something"], extraction_rows(record), key="audit-verdicts")
    attacks = list(record["verdicts"]["unlearned"])
    series = {"before unlearning": [_remembered_share(record["verdicts"].get("original"), a)
                                    for a in attacks],
              "after unlearning": [_remembered_share(record["verdicts"]["unlearned"], a)
                                   for a in attacks]}
    if not any(v is not None for v in series["before unlearning"]):
        del series["before unlearning"]
    report.image("Share of forget texts remembered under each attack",
                 plots.grouped_bars("Forget texts remembered, by attack",
                                    [_attack_label(a) for a in attacks], series, "share"))


def check_verdict_section(report: Report, check: dict) -> None:
    """The quick check's verdict, for a run evaluated no further."""
    v = check["verdict"]
    report.text(f"Overall: {v['state']} (from the quick check after the run, check.json: the "
                "forget set against never-seen texts under greedy decoding, sampling, 8-bit "
                "and 4-bit weights, and membership inference).")
    if v["reasons"]:
        report.items(v["reasons"])
    aucs = ", ".join(f"{k} {fmt(a)}" for k, a in v["mia_auc"].items())
    report.text(f"Membership-inference AUCs (forget set vs never-seen texts): {aucs}; band "
                f"[{v['auc_band'][0]}, {v['auc_band'][1]}].")
    report.table(["attack", "remembered, original", "remembered, unlearned", "fields leaked",
                  "finds something"], extraction_rows(check), key="check")


def check_utility_rows(check: dict) -> list[list]:
    """WikiText perplexity before and after, from the quick check."""
    ppl = check.get("perplexity") or {}
    if ppl.get("before") is None and ppl.get("after") is None:
        return []
    return [[f"{ppl.get('corpus')} perplexity (first {ppl.get('documents')} documents)",
             ppl.get("before"), ppl.get("after")]]


def write_audit_report(record: dict, out: str | Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.html`` of an ``unlearnlm audit`` run."""
    model = Path(str(record["settings"]["model"])).name
    report = Report(f"Robustness audit of {model}")
    audit_section(report, record, title="Attacks and scores")
    return write_report(report, Path(out))
