"""``unlearnlm report RUN_DIR``: ``report.md`` and a self-contained ``report.html`` for one run.

Reads ``RUN_DIR/run.json`` (written by ``unlearn``) and, when there, the ``eval.json`` of the
model before unlearning, after it, and of a model trained without the forget set (defaults:
``RUN_DIR/eval-before``, ``RUN_DIR/eval-after``, ``RUN_DIR/eval-retain``), the quick check that
ends a run (``RUN_DIR/check.json``) and a robustness audit (``RUN_DIR/audit/audit.json``).
Sections: the run (method, model, forget set, why it stopped), its dynamics per epoch, every
forget sample before and after, utility before and after, the privacy verdict, the robustness
audit, and the collapse guard's events. Without evaluations, utility and the verdict come from
the quick check. A part without data is left out or marked "not evaluated".

The report is built as blocks (``report.plots.Report``: headings, text, tables, plots) and
rendered to markdown and to HTML with every plot inline, so ``report.html`` needs nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

from unlearnlm.errors import UnlearnError
from unlearnlm.report import plots
from unlearnlm.report.audit import audit_section, check_utility_rows, check_verdict_section
from unlearnlm.report.plots import Report, fmt, write_report

EVAL_SIDES = ("before", "after", "retain")
METRICS = ("ma", "el", "bleu", "bertscore")
LABELS = {"ma": "MA", "el": "EL", "bleu": "BLEU", "bertscore": "BERTScore", "entropy": "entropy"}


# --- reading a run and its evaluations ----------------------------------------------------------


def load_run(run_dir: Path) -> dict:
    """``run_dir/run.json``, or an UnlearnError that says what to give instead."""
    path = run_dir / "run.json"
    if not path.is_file():
        hint = (f" (there is one in {run_dir / 'model'}: give that folder)"
                if (run_dir / "model" / "run.json").is_file() else "")
        raise UnlearnError(f"no run.json in {run_dir}{hint}; give the --out folder of a finished "
                           "`unlearnlm unlearn` run")
    record = _read_json(path, "run.json")
    if not isinstance(record.get("epochs"), list):
        raise UnlearnError(f"{path} has no 'epochs' list; give the run.json that "
                           "`unlearnlm unlearn` writes")
    return record


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnlearnError(f"can't read {what} at {path} ({exc}); give a valid JSON file") from exc
    if not isinstance(data, dict):
        raise UnlearnError(f"{path} is not a JSON object; give the {what} unlearnlm writes")
    return data


def load_eval(given: str | Path | None, default: Path) -> dict | None:
    """An eval.json (a file, or a folder holding one); ``default`` is read only if it exists."""
    if given is None:
        path = default
        if not path.is_file():
            return None
    else:
        path = Path(given)
        path = path / "eval.json" if path.is_dir() else path
        if not path.is_file():
            raise UnlearnError(f"no eval.json at {given}; give the eval.json that "
                               "`unlearnlm eval --out DIR` writes, or DIR")
    data = _read_json(path, "eval.json")
    if not isinstance(data.get("tasks"), dict):
        raise UnlearnError(f"{path} has no 'tasks'; give the eval.json `unlearnlm eval` writes")
    data["path"] = str(path)
    return data


# --- sections ------------------------------------------------------------------------------


def scored_epochs(record: dict) -> list[dict]:
    """The epochs that were kept (epoch 0 = before training); rolled-back ones are left out."""
    return [e for e in record.get("epochs", []) if "rolled_back" not in e]


def _short(digest: str | None) -> str:
    return f"sha256 {digest[:12]}..." if digest else "no hash"


def header_section(report: Report, record: dict) -> None:
    """What ran on what, and how it ended."""
    method, model = record.get("method", {}), record.get("model", {})
    forget, stopped = record.get("forget_set", {}), record.get("stopped", {})
    trained = [e for e in scored_epochs(record) if e["epoch"] > 0]
    rolled = len(record.get("epochs", [])) - len(scored_epochs(record))
    timings = record.get("timings_s", {})
    rows = [
        ["method", f"{method.get('name')} (loss weights {json.dumps(method.get('loss_weights'))};"
                   f" per-sample dropping: {fmt(method.get('iterative_refinement'))})"],
        ["model", f"{model.get('spec')} ({_short(model.get('sha256'))})"],
        ["forget set", f"{forget.get('samples')} samples, {forget.get('path')} "
                       f"({_short(forget.get('sha256'))})"],
        ["stopped", f"after epoch {stopped.get('epoch')}: {stopped.get('reason')}"],
        ["epochs", f"{len(trained)} trained, {rolled} rolled back (epoch 0 = before training)"],
        ["wall time", f"{sum(timings.values()):.1f} s (" + ", ".join(
            f"{k} {v:.1f}" for k, v in timings.items()) + ")"],
    ]
    thresholds = record.get("thresholds")
    if thresholds:
        rows.append(["thresholds", "drop: BLEU < {bleu:.4f}, BERTScore < {bertscore:.4f}; "
                     "stop: EL < {el:.4f}, MA < {ma:.4f}; {source}".format(**thresholds)])
    versions = record.get("versions", {})
    rows.append(["versions", ", ".join(f"{k} {v}" for k, v in versions.items()
                                       if k != "platform")])
    report.table(["", ""], rows, key="run")


def _dynamics_row(e: dict) -> list:
    if "rolled_back" in e:
        return [e["epoch"], f"rolled back: {e['rolled_back']}", "", "", "", "", "", ""]
    mean, dropped = e.get("mean", {}), e.get("dropped", [])
    names = ", ".join(dropped[:6]) + (", ..." if len(dropped) > 6 else "")
    return [e["epoch"], e.get("active"), f"{len(dropped)} ({names})" if dropped else 0,
            *(mean.get(k) for k in METRICS), e.get("losses", {}).get("total")]


def dynamics_section(report: Report, record: dict) -> None:
    """Per epoch: active samples, drops, mean scores, losses; a table and three plots."""
    report.heading("Unlearning dynamics")
    epochs, total = scored_epochs(record), record.get("forget_set", {}).get("samples", 0)
    if not epochs:
        report.text("run.json holds no scored epoch.")
        return
    report.table(["epoch", "active", "dropped", "mean MA", "mean EL", "mean BLEU",
                  "mean BERTScore", "total loss"],
                 [_dynamics_row(e) for e in record["epochs"]], key="dynamics")
    xs = [e["epoch"] for e in epochs]
    report.image("Active forget samples per epoch",
                 plots.active_plot(xs, [e.get("active", 0) for e in epochs], total))
    means = {k: [e.get("mean", {}).get(k) for e in epochs] for k in METRICS}
    report.image("Mean scores per epoch (dashed: thresholds)",
                 plots.metrics_plot(xs, means, record.get("thresholds")))
    trained = [e for e in epochs if e.get("losses")]
    terms = list(dict.fromkeys(t for e in trained for t in e["losses"]))
    if terms:
        losses = {t: [e["losses"].get(t) for e in trained] for t in terms}
        report.image("Loss terms per epoch",
                     plots.losses_plot([e["epoch"] for e in trained], losses))


def _last_scored(epochs: list[dict]) -> dict[str, dict]:
    """Each sample's last entry that holds generation scores (dropped samples stop being
    generated from, so their last BLEU/BERTScore is the one that dropped them)."""
    last: dict[str, dict] = {}
    for e in epochs:
        for s in e.get("samples", []):
            if s.get("bleu") is not None or "generation" in s:
                last[s["id"]] = s
    return last


def samples_section(report: Report, record: dict) -> None:
    """Every forget sample: epoch 0 vs the last epoch, and when it was dropped."""
    epochs = scored_epochs(record)
    report.heading("Forget samples before and after")
    if not epochs:
        report.text("No scores in run.json.")
        return
    first = {s["id"]: s for s in epochs[0].get("samples", [])}
    final = {s["id"]: s for s in epochs[-1].get("samples", [])}
    last = _last_scored(epochs)
    dropped = {i: e["epoch"] for e in epochs for i in e.get("dropped", [])}
    partner = {p["forget_id"]: p["analogous_id"] for p in record.get("pairs") or []}
    texts = any("generation" in s for s in last.values())
    header = ["sample", "MA before", "MA after", "EL before", "EL after", "BLEU before",
              "BLEU last", "BERTScore before", "BERTScore last", "dropped at epoch"]
    header += ["paired with"] * bool(partner) + ["last generation"] * texts
    rows = []
    for sid in record.get("forget_set", {}).get("ids") or list(first):
        a, b, c = first.get(sid, {}), final.get(sid, {}), last.get(sid, {})
        row = [sid, a.get("ma"), b.get("ma"), a.get("el"), b.get("el"), a.get("bleu"),
               c.get("bleu"), a.get("bertscore"), c.get("bertscore"), dropped.get(sid)]
        row += [partner.get(sid)] * bool(partner) + [_clip(c.get("generation"))] * texts
        rows.append(row)
    report.text(f"Before = epoch 0 (the model before training); after = epoch "
                f"{epochs[-1]['epoch']}. BLEU/BERTScore 'last' are each sample's last scores "
                "while it was active.")
    report.table(header, rows, key="samples")


def _clip(text: str | None, width: int = 140) -> str | None:
    if text is None:
        return None
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _task_metrics(name: str, aggregate: dict) -> list[tuple[str, str, str]]:
    """(label, key, kind) of the numbers a task contributes; kind picks the plot."""
    if name.startswith("ppl_"):
        return [(f"{name[4:]} perplexity", "perplexity", "ppl")]
    if name == "mia":
        return [(f"MIA AUC ({k})", k, "score") for k in aggregate]
    if name == "forget":
        return [(f"forget set mean {LABELS[k]}", k, "forget") for k in (*METRICS, "entropy")]
    if "f1" in aggregate:
        return [(f"{name} F1", "f1", "score")]
    if "acc" in aggregate:
        return [(f"{name} accuracy", "acc", "score")]
    return []


def utility_rows(evals: dict[str, dict]) -> list[tuple[str, str, list]]:
    """(label, kind, one value per evaluation) for every number any evaluation has."""
    names = list(dict.fromkeys(n for ev in evals.values() for n in ev["tasks"]))
    rows = []
    for name in names:
        seen = next(ev["tasks"][name]["aggregate"] for ev in evals.values()
                    if name in ev["tasks"])
        for label, key, kind in _task_metrics(name, seen):
            values = [ev["tasks"].get(name, {}).get("aggregate", {}).get(key)
                      for ev in evals.values()]
            rows.append((label, kind, values))
    return rows


def utility_section(report: Report, evals: dict[str, dict], check: dict | None = None) -> None:
    """Utility and privacy numbers side by side (before / after / retain model) + bar plots."""
    report.heading("Utility before and after")
    if not evals and check and check_utility_rows(check):
        report.text("From the quick check after the run (check.json); `unlearnlm eval` measures "
                    "the downstream tasks too.")
        report.table(["metric", "before", "after"], check_utility_rows(check), key="utility")
        return
    if not evals:
        report.text("Not evaluated. Run `unlearnlm eval --model MODEL --out RUN_DIR/eval-before` "
                    "on the original model and `... --model RUN_DIR --out RUN_DIR/eval-after` "
                    "on the unlearned one, then build the report again.")
        return
    columns = [{"retain": "retain model"}.get(side, side) for side in evals]
    report.items([f"{col}: {ev['path']} (model {ev.get('settings', {}).get('model', '?')})"
                  for col, ev in zip(columns, evals.values())])
    rows = utility_rows(evals)
    report.table(["metric", *columns], [[label, *values] for label, _, values in rows],
                 key="utility")
    for kind, title, unit in (("ppl", "Perplexity (lower is better)", "perplexity"),
                              ("score", "Accuracy, dialogue F1 and MIA AUC", "score")):
        chosen = [(label, values) for label, k, values in rows if k == kind]
        if chosen:
            series = {col: [v[i] for _, v in chosen] for i, col in enumerate(columns)}
            report.image(title, plots.grouped_bars(title, [c[0] for c in chosen], series, unit))


def privacy_section(report: Report, after: dict | None, check: dict | None = None) -> None:
    """The forgetting verdict of the unlearned model, overall and per sample."""
    report.heading("Privacy verdict")
    section = (after or {}).get("tasks", {}).get("verdict")
    if not section and check:
        check_verdict_section(report, check)
        return
    if not section:
        report.text("Not evaluated. Run `unlearnlm eval --tasks forget,mia --forget FORGET "
                    "--model RUN_DIR --out RUN_DIR/eval-after` (non-member texts give the "
                    "reference) to get one.")
        return
    verdict = section["samples"]
    state = "FORGOTTEN" if verdict["forgotten"] else "NOT FORGOTTEN"
    band = verdict.get("auc_band", [0.4, 0.6])
    report.text(f"Overall: {state} ({verdict.get('summary', '')}). "
                f"{verdict['share_forgotten']:.0%} of the samples score like non-members; "
                f"MIA AUCs within [{band[0]}, {band[1]}]: {fmt(verdict.get('aucs_within_band'))}.")
    cuts = verdict.get("thresholds", {})
    report.text("A sample counts as forgotten when every metric is at most the non-members' "
                f"quantile {verdict.get('quantile', 0.5)}: " + ", ".join(
                    f"{LABELS.get(m, m)} <= {v:.4f}" for m, v in cuts.items())
                + ". Cells: value (percentile among non-members).")
    forget_rows = after["tasks"].get("forget", {}).get("samples", [])
    metrics = list(cuts)
    rows = []
    for i, row in enumerate(verdict.get("samples", [])):
        base = forget_rows[i] if i < len(forget_rows) else {}
        cells = [f"{row[m]['value']:.3f} ({row[m]['percentile']:.0f})" for m in metrics]
        rows.append([base.get("id", i), row["forgotten"], *cells,
                     _clip(base.get("generation"))])
    report.table(["sample", "forgotten", *(LABELS.get(m, m) for m in metrics),
                  "generation after"], rows, key="verdict")


def guard_section(report: Report, record: dict) -> None:
    """The collapse guard: held-out perplexity at the start, and every roll-back."""
    guard = record.get("guard")
    report.heading("Collapse guard")
    if not guard:
        report.text("run.json has no collapse-guard record.")
        return
    start = guard.get("probe_ppl_start")
    report.text(f"Held-out probe perplexity at the start: {fmt(start)}; learning rate at the "
                f"end: {guard.get('lr')}.")
    events = guard.get("events", [])
    if not events:
        report.text("No events: no epoch was rolled back.")
        return
    report.table(["epoch", "problem", "action", "lr before", "lr after"],
                 [[e.get("epoch"), e.get("problem"), e.get("action"), e.get("lr_before"),
                   e.get("lr_after")] for e in events], key="guard")


# --- the whole report ---------------------------------------------------------------------


def run_report(record: dict, evals: dict[str, dict], check: dict | None = None,
               audit: dict | None = None) -> Report:
    """The report of one run; ``evals`` maps 'before' / 'after' / 'retain' to eval.json data;
    ``check`` is the quick check's check.json, ``audit`` an audit.json."""
    method = record.get("method", {}).get("name", "?")
    model = Path(str(record.get("model", {}).get("spec", "?"))).name
    report = Report(f"Unlearning report: {method} on {model}")
    header_section(report, record)
    dynamics_section(report, record)
    samples_section(report, record)
    utility_section(report, evals, check)
    privacy_section(report, evals.get("after"), check)
    if audit:
        audit_section(report, audit)
    guard_section(report, record)
    return report


def load_json_file(given: str | Path | None, default: Path, name: str, key: str) -> dict | None:
    """A JSON file the report reads (``check.json``, ``audit.json``): the given file or a folder
    holding it, else ``default`` when it exists; it must hold ``key``."""
    path = default if given is None else Path(given)
    path = path / name if path.is_dir() else path
    if not path.is_file():
        if given is None:
            return None
        raise UnlearnError(f"no {name} at {given}; give the {name} that unlearnlm writes, or "
                           "its folder")
    data = _read_json(path, name)
    if key not in data:
        raise UnlearnError(f"{path} has no '{key}'; give the {name} that unlearnlm writes")
    return data


def build_report(run_dir: str | Path, before: str | Path | None = None,
                 after: str | Path | None = None, retain: str | Path | None = None,
                 out: str | Path | None = None, audit: str | Path | None = None
                 ) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for the run in ``run_dir`` (into ``out``, default
    ``run_dir``); returns both paths. ``before`` / ``after`` / ``retain`` are eval.json files or
    folders holding one (defaults: ``run_dir/eval-before`` etc., used when they exist);
    ``audit`` an audit.json or its folder (default: ``run_dir/audit``, when it exists)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UnlearnError(f"run directory {run_dir} not found; give the --out folder of an "
                           "`unlearnlm unlearn` run")
    record = load_run(run_dir)
    given = dict(zip(EVAL_SIDES, (before, after, retain)))
    evals = {side: data for side in EVAL_SIDES
             if (data := load_eval(given[side], run_dir / f"eval-{side}" / "eval.json"))}
    check = load_json_file(None, run_dir / "check.json", "check.json", "verdict")
    audited = load_json_file(audit, run_dir / "audit" / "audit.json", "audit.json", "lines")
    return write_report(run_report(record, evals, check, audited), Path(out) if out else run_dir)
