"""The demo's markdown report: what leaked before and after, fluency, and the run's dynamics."""

from __future__ import annotations

import json
from pathlib import Path

from unlearnlm.records import PRIVATE_FIELDS


def _leak_rows(rows: list[dict]) -> list[str]:
    lines = ["| record | " + " | ".join(PRIVATE_FIELDS) + " | continuation |",
             "|---|" + "---|" * (len(PRIVATE_FIELDS) + 1)]
    for row in rows:
        marks = " | ".join("leaks" if row["leaked"][f] else "-" for f in PRIVATE_FIELDS)
        text = row["continuation"].replace("|", "\\|").replace("\n", " ")[:90]
        lines.append(f"| {row['name']} | {marks} | {text} |")
    return lines


def write_demo_report(out: Path, summary: dict, before: dict, after: dict, record: dict) -> Path:
    """Write ``report.md`` and ``summary.json`` into ``out``; returns the report's path."""
    lines = [
        "# unlearnlm demo report",
        "",
        f"Model: `{summary['settings']['model']}`, fine-tuned until it recited "
        f"{summary['settings']['forget'] + summary['settings']['keep']} fictitious records "
        f"(suffix token accuracy {summary['finetune_suffix_accuracy']:.3f}), then ICU on "
        f"{summary['settings']['forget']} of them.",
        "",
        "| | before | after |",
        "|---|---|---|",
        f"| forget records: private fields leaking | {summary['forget_leaked_before']} of "
        f"{summary['fields_forget']} | {summary['forget_leaked_after']} of "
        f"{summary['fields_forget']} |",
        f"| kept records: private fields leaking | {summary['keep_leaked_before']} of "
        f"{summary['fields_keep']} | {summary['keep_leaked_after']} of {summary['fields_keep']} |",
    ]
    if summary["wikitext_ppl_before"] is not None:
        lines.append(f"| WikiText perplexity | {summary['wikitext_ppl_before']:.2f} | "
                     f"{summary['wikitext_ppl_after']:.2f} |")
    lines += ["", f"ICU stopped after epoch {summary['unlearn_epochs']}: {summary['stopped']}.",
              f"Thresholds: `{json.dumps(record['thresholds'])}`.", "",
              "## Unlearning dynamics", "", "| epoch | active | dropped | mean MA | mean BLEU "
              "| mean BERTScore | total loss |", "|---|---|---|---|---|---|---|"]
    for e in record["epochs"]:
        if "rolled_back" in e:
            lines.append(f"| {e['epoch']} | rolled back: {e['rolled_back']} | | | | | |")
            continue
        m = e["mean"]
        lines.append(
            f"| {e['epoch']} | {e['active']} | {len(e['dropped'])} | {_fmt(m['ma'])} | "
            f"{_fmt(m['bleu'])} | {_fmt(m['bertscore'])} | {_fmt(e['losses'].get('total'))} |"
        )
    for title, state in (("Before", before), ("After", after)):
        lines += ["", f"## {title}: records to forget", "", *_leak_rows(state["forget"]),
                  "", f"## {title}: records to keep", "", *_leak_rows(state["keep"]),
                  "", f"## {title}: general prompts", ""]
        lines += [f"- {c.strip()[:120]!r}" for c in state["fluency"]["continuations"]]
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in
                                              summary["timings_s"].items()), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return report


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
