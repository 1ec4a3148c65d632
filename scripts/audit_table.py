"""Put several audits side by side, as the bench does for its methods.

Usage: .venv/bin/python scripts/audit_table.py NAME=AUDIT_DIR [NAME=AUDIT_DIR ...]

Each AUDIT_DIR is the ``--out`` of an ``unlearnlm audit`` run (it holds audit.json); all must
have attacked the same original model. Prints two markdown tables: the bench's (forget texts
remembered under each attack, the original model first) and, per attack, the private fields that
leak and the membership-inference AUC after the attack ("before unlearning" is the original
model with no attack).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from unlearnlm.bench.results import audit_markdown, audit_summary


def _line(record: dict, attack: str, metric: str) -> dict | None:
    return next((x for x in record["lines"] if x["attack"] == attack and x["metric"] == metric),
                None)


def _number(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if metric == "leaked" else f"{value:.2f}"


def leaks_and_auc(audits: dict[str, dict]) -> list[str]:
    """A row per attack; per model the fields leaked and the MIA AUC after the attack."""
    names = list(audits)
    attacks = list(next(iter(audits.values()))["verdicts"]["unlearned"])
    head = ["attack", "before unlearning: leaked / AUC"]
    head += [f"{name}: leaked / AUC" for name in names]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for attack in attacks:
        first = next(iter(audits.values()))
        cells = [attack if attack != "none" else "no attack"]
        before = [_line(first, "none", m) for m in ("leaked", "mia_auc")]
        original = [_line(first, attack, m) for m in ("leaked", "mia_auc")]
        if attack == "none":
            cells.append(" / ".join(_number(x and x["before"], m)
                                    for x, m in zip(before, ("leaked", "mia_auc"))))
        else:  # the original model under the same attack
            cells.append(" / ".join(_number(x and x.get("original_attacked"), m)
                                    for x, m in zip(original, ("leaked", "mia_auc"))))
        for name in names:
            parts = []
            for metric in ("leaked", "mia_auc"):
                x = _line(audits[name], attack, metric)
                value = None if x is None else x["after" if attack == "none" else "attacked"]
                parts.append(_number(value, metric))
            cells.append(" / ".join(parts))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    audits = {}
    for arg in argv:
        name, folder = arg.split("=", 1)
        path = Path(folder) / "audit.json"
        if not path.is_file():
            print(f"audit_table: no audit.json in {folder} (give an `unlearnlm audit --out` "
                  "folder)", file=sys.stderr)
            return 2
        audits[name] = json.loads(path.read_text())
    print("\n".join(audit_markdown(audit_summary(audits))))
    print()
    print("\n".join(leaks_and_auc(audits)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
