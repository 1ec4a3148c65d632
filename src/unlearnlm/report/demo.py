"""The demo's report: what leaked before and after, fluency, and the run's dynamics.

One :class:`~unlearnlm.report.plots.Report` is rendered to ``report.md`` and to a self-contained
``report.html`` (the same story, plus plots); ``summary.json`` holds the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from unlearnlm.data.records import FLUENCY_PROMPTS, PRIVATE_FIELDS
from unlearnlm.report import plots
from unlearnlm.report.plots import Report, write_report
from unlearnlm.report.run import dynamics_section
from unlearnlm.rundir import write_json


def write_demo_report(out: Path, summary: dict, before: dict, after: dict, record: dict) -> Path:
    """Write ``report.md``, ``report.html`` and ``summary.json`` into ``out``; returns the
    markdown report's path."""
    report = Report("unlearnlm demo report")
    _overview(report, summary, record)
    _field_counts(report, before, after)
    dynamics_section(report, record)
    for title, state in (("Before", before), ("After", after)):
        report.heading(f"{title}: records to forget")
        report.table(*_leak_table(state["forget"]))
        report.heading(f"{title}: records to keep")
        report.table(*_leak_table(state["keep"]))
    _prompts(report, before, after)
    report.text("Timings (s): " + ", ".join(f"{k} {v}" for k, v in summary["timings_s"].items()))
    markdown, _ = write_report(report, Path(out))
    write_json(Path(out) / "summary.json", summary)
    return markdown


def _overview(report: Report, summary: dict, record: dict) -> None:
    settings = summary["settings"]
    report.text(f"Model: `{settings['model']}`, fine-tuned until it recited "
                f"{settings['forget'] + settings['keep']} fictitious records (suffix token "
                f"accuracy {summary['finetune_suffix_accuracy']:.3f}), then `{settings['method']}` "
                f"on {settings['forget']} of them.")
    rows = [
        ["forget records: private fields leaking",
         f"{summary['forget_leaked_before']} of {summary['fields_forget']}",
         f"{summary['forget_leaked_after']} of {summary['fields_forget']}"],
        ["kept records: private fields leaking",
         f"{summary['keep_leaked_before']} of {summary['fields_keep']}",
         f"{summary['keep_leaked_after']} of {summary['fields_keep']}"],
        ["kept records: share of their leaks still there", "100%",
         f"{summary['keep_kept_share']:.0%}" if summary["keep_leaked_before"] else "-"],
    ]
    if summary["wikitext_ppl_before"] is not None:
        base = summary.get("wikitext_ppl_base")
        rows.append(["WikiText perplexity" + (f" (base model {base:.2f})" if base else ""),
                     f"{summary['wikitext_ppl_before']:.2f}",
                     f"{summary['wikitext_ppl_after']:.2f}"])
    report.table(["", "before", "after"], rows, key="summary")
    report.text(f"`{settings['method']}` stopped after epoch {summary['unlearn_epochs']}: "
                f"{summary['stopped']}. Thresholds: `{json.dumps(record['thresholds'])}`.")
    _checks(report, summary)


def _checks(report: Report, summary: dict) -> None:
    """A forgotten person should look like a stranger to the model, under any decoding."""
    n, strangers = summary["settings"]["forget"], summary["strangers"]
    report.heading("Forgotten like a stranger?")
    report.table(["check", "forgotten records", "strangers (never seen)"], [
        ["private fields leaking in sampled continuations (temperature 1)",
         f"{summary['forget_leaked_sampled']} of {summary['forget_sampled_fields']}", "-"],
        ["continuations shaped like a record (phone, e-mail, address, ID)",
         f"{summary['forget_shape_kept']} of {n}",
         f"{summary['stranger_shape_kept']} of {strangers}"],
        ["other people's private fields in the continuations",
         f"{summary['forget_other_fields']} ({summary['forget_other_fields'] / n:.2f} a record)",
         f"{summary['stranger_other_fields']} "
         f"({summary['stranger_other_fields'] / strangers:.2f} a name)"],
        ["median NLL of the true text (nats/token)",
         f"{summary['forget_nll_after']:.2f} (before {summary['forget_nll_before']:.2f})",
         f"{summary['stranger_nll_median']:.2f}"],
        ["membership-inference AUC (NLL), forgotten vs strangers",
         f"{summary['forget_mia_auc']:.2f}", "0.5 = indistinguishable"],
    ], key="checks")


def _field_counts(report: Report, before: dict, after: dict) -> None:
    """Per private field: in how many records it leaks, before and after."""
    series = {f"{group} {when}": [sum(r["leaked"][f] for r in state[group])
                                  for f in PRIVATE_FIELDS]
              for group in ("forget", "keep") for when, state in (("before", before),
                                                                  ("after", after))}
    report.heading("Private fields leaking")
    report.table(["field", *(f"records to {name}" for name in series)],
                 [[f, *(values[i] for values in series.values())]
                  for i, f in enumerate(PRIVATE_FIELDS)], key="fields")
    report.image("Records leaking each private field",
                 plots.grouped_bars("Records leaking each private field", list(PRIVATE_FIELDS),
                                    series, "records"))


def _leak_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    header = ["record", *PRIVATE_FIELDS, "continuation"]
    return header, [[row["name"], *("leaks" if row["leaked"][f] else "-" for f in PRIVATE_FIELDS),
                     " ".join(row["continuation"].split())[:90]] for row in rows]


def _prompts(report: Report, before: dict, after: dict) -> None:
    report.heading("General prompts: before and after")
    pairs = zip(FLUENCY_PROMPTS, before["fluency"]["continuations"],
                after["fluency"]["continuations"])
    report.table(["prompt", "before", "after"],
                 [[p, b.strip()[:120], a.strip()[:120]] for p, b, a in pairs], key="prompts")
