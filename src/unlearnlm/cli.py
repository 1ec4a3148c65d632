"""The ``unlearnlm`` command (see ``unlearnlm -h``).

The flags of ``unlearn``, ``finetune``, ``eval``, ``audit``, ``bench``, ``demo``, ``sisa train``
and ``sisa forget`` are made from the fields of their settings dataclass
(``unlearnlm.settings``): ``lr`` is ``--lr``, ``prefix_tokens`` is ``--prefix-tokens``, a
boolean ``x`` is ``--x`` / ``--no-x``. Flags override
``--config FILE.yaml``, which overrides the defaults. Bad input exits with status 2 and one line
on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from unlearnlm.audit.settings import AuditSettings
from unlearnlm.bench.runner import BenchSettings
from unlearnlm.demo import DemoSettings
from unlearnlm.errors import UnlearnError
from unlearnlm.evaluate.settings import EvalSettings
from unlearnlm.settings import (
    DataSettings,
    FinetuneSettings,
    UnlearnConfig,
    add_flags,
    settings_from_args,
)
from unlearnlm.train.sisa import SisaForgetSettings, SisaTrainSettings

log = logging.getLogger("unlearnlm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearnlm",
        description="Make a language model forget specific texts, and measure both sides.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("unlearn", help="unlearn a forget set (default method: relabel)")
    run.add_argument("--resume", metavar="OUT",
                     help="carry on a killed run from its last finished epoch (its own settings)")
    add_flags(run, UnlearnConfig)
    run.set_defaults(func=cmd_unlearn)

    ft = sub.add_parser("finetune", help="fine-tune a model on texts until it memorises them")
    add_flags(ft, FinetuneSettings)
    ft.set_defaults(func=cmd_finetune)

    demo = sub.add_parser("demo", help="make SmolLM2 leak fictitious records, then forget some")
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    add_flags(demo, DemoSettings)
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="measure forgetting, fluency, downstream skill, privacy")
    add_flags(ev, EvalSettings)
    ev.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="write report.md and report.html for an unlearn run")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of an unlearn run")
    for side, what in (("before", "the original model"), ("after", "the unlearned model"),
                       ("retain", "a model trained without the forget set")):
        rep.add_argument(f"--{side}", metavar="P", help=f"eval.json (or its folder) of {what} "
                         f"(default: RUN_DIR/eval-{side}/eval.json when it exists)")
    rep.add_argument("--audit", metavar="P", help="audit.json (or its folder) of `unlearnlm "
                     "audit` on the run (default: RUN_DIR/audit/audit.json when it exists)")
    rep.add_argument("--out", metavar="DIR", help="where to write the report (default RUN_DIR)")
    rep.set_defaults(func=cmd_report)

    aud = sub.add_parser("audit", help="attack an unlearned model (relearning, quantisation, "
                         "decoding) and score whether the forgotten texts come back")
    add_flags(aud, AuditSettings)
    aud.set_defaults(func=cmd_audit)

    bench = sub.add_parser("bench", help="the paper's comparison: make a model leak a forget "
                           "set, unlearn it with every method, evaluate all, tabulate")
    add_flags(bench, BenchSettings)
    bench.set_defaults(func=cmd_bench)

    sisa = sub.add_parser("sisa", help="SISA: one LoRA adapter per shard of the training texts; "
                          "forgetting retrains only the shards that held the texts")
    sisa_sub = sisa.add_subparsers(dest="sisa_command", required=True)
    train = sisa_sub.add_parser("train", help="train every shard's adapter, with a checkpoint "
                                "after each slice")
    add_flags(train, SisaTrainSettings)
    train.set_defaults(func=cmd_sisa_train)
    forget = sisa_sub.add_parser("forget", help="a new SISA folder without some texts: the "
                                 "shards that held them retrain from the slice before")
    forget.add_argument("sisa_dir", nargs="?", default=argparse.SUPPRESS, metavar="DIR",
                        help="the SISA folder (the same as --sisa-dir)")
    add_flags(forget, SisaForgetSettings)
    forget.set_defaults(func=cmd_sisa_forget)

    data = sub.add_parser("data", help="download the public data sets into the cache, or list "
                          "which are present and where")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="download data sets from their original sources "
                                "(Hugging Face hub, GitHub) into UNLEARNLM_CACHE/data")
    fetch.add_argument("names", nargs="+", metavar="NAME",
                       help="data sets to download (see `unlearnlm data list`)")
    add_flags(fetch, DataSettings)
    fetch.set_defaults(func=cmd_data_fetch)
    listed = data_sub.add_parser("list", help="each data set: present (data folder or cache, "
                                 "with its path) or missing (with the command that fetches it)")
    listed.set_defaults(func=cmd_data_list)

    methods = sub.add_parser("methods", help="list the methods and their loss weights")
    methods.set_defaults(func=cmd_methods)
    return parser


def cmd_unlearn(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from unlearnlm.audit.check import unlearn_and_check

    record = (unlearn_and_check(resume=args.resume) if args.resume
              else unlearn_and_check(settings_from_args(UnlearnConfig, args)))
    if PartialState().is_main_process:  # under `accelerate launch`, one process reports
        _print_done(record)
    return 0


def _start_missing_processes(argv: list[str]) -> int | None:
    """Under ``accelerate launch --num_processes N`` on a machine without GPUs, accelerate starts
    one process; start the N over gloo instead and return their exit status (None: nothing to
    do, this process runs the command)."""
    import subprocess

    import torch

    from unlearnlm.train.distributed import launcher_argv, relaunch_command

    command = relaunch_command(os.environ, launcher_argv(), torch.cuda.device_count(), argv)
    if command is None:
        return None
    logging.getLogger("unlearnlm").info(
        "accelerate started 1 of the %s processes asked for (no GPUs and no --multi_gpu); "
        "starting them on the CPU over gloo", command[command.index("--num_processes") + 1])
    return subprocess.run(command, env=dict(os.environ)).returncode


def _print_done(record: dict) -> None:
    stopped = record["stopped"]
    print(
        f"Done after {stopped['epoch']} epochs ({stopped['reason']}); "
        f"{record['epochs'][-1]['active']} of {record['forget_set']['samples']} samples still "
        f"active. Model and run.json in {record['config']['out']}"
    )
    if "check" in record:
        print(record["check"]["summary"])


def cmd_finetune(args: argparse.Namespace) -> int:
    from unlearnlm.train.finetune import finetune

    settings = settings_from_args(FinetuneSettings, args)
    record = finetune(settings)
    state = "memorised" if record["memorised"] else "NOT memorised (raise --max-epochs or --lr)"
    print(f"Suffix token accuracy {record['suffix_accuracy']:.3f} after "
          f"{len(record['epochs'])} epochs: {state}. Model in {settings.out}")
    if "dp" in record:
        dp = record["dp"]
        print(f"DP-SGD: epsilon spent {dp['epsilon_spent']:.3f} at delta {dp['delta']:g} "
              f"(target {dp['target_epsilon']:g}) in {dp['steps']} steps, noise multiplier "
              f"{dp['noise_multiplier']:.3f}, clipping at {dp['max_grad_norm']:g}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from unlearnlm.demo import run_demo

    run_demo(args.out, settings_from_args(DemoSettings, args))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from unlearnlm.data.texts import read_records, split_records
    from unlearnlm.evaluate.suite import (
        aggregate_table,
        evaluate,
        extraction_nonmembers,
        write_results,
    )
    from unlearnlm.lm.guards import guard_summary
    from unlearnlm.train.sisa import load_lm

    s = settings_from_args(EvalSettings, args)
    tasks = s.planned_tasks()
    wmdp, mmlu = s.question_sets()
    if s.backend == "harness":
        from unlearnlm.evaluate.harness import require_lm_eval

        require_lm_eval()  # before the model loads
    forget = read_records(s.forget, role="forget") if s.forget else None
    nonmember = None
    if forget and {"forget", "mia"} & set(tasks):
        nonmember = (read_records(s.nonmember, role="nonmember")[: s.limit]
                     if s.nonmember else extraction_nonmembers(s.limit))
    split = {"prefix_tokens": s.prefix_tokens, "suffix_tokens": s.suffix_tokens}
    runs = [("", s.model), ("original", s.original), ("retain", s.retain)]
    for name, model_path in [(n, m) for n, m in runs if m]:
        lm = load_lm(model_path)  # a SISA folder: its ensemble
        tokenizer = lm.tokenizer
        samples = split_records(forget, tokenizer, **split) if forget else None
        if not name and s.wrap:  # the inference-time baseline wraps --model only
            lm = s.guarded(lm, samples)
        result = evaluate(
            lm, tokenizer, tasks=tasks, limit=s.limit, el_n=s.el_n, forget=samples,
            nonmember=split_records(nonmember, tokenizer, **split, role="nonmember")
            if nonmember else None,
            judge=s.judge(), backend=s.backend, wmdp=wmdp, mmlu=mmlu,
        )
        result["settings"].update(model=model_path, forget=s.forget, role=name or "model",
                                  nonmember=s.nonmember
                                  or ("extraction val split" if nonmember else None), **split)
        if not name and s.wrap:
            result["settings"]["wrap"] = {"name": s.wrap, **guard_summary(lm)}
        path = write_results(result, os.path.join(s.out, name) if name else s.out)
        print(f"== {name or 'model'}: {model_path}")
        print(aggregate_table(result))
        print(f"Per-sample results in {path}")
        del lm
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from unlearnlm.audit.run import audit, summary_lines
    from unlearnlm.report.audit import write_audit_report

    s = settings_from_args(AuditSettings, args)
    record = audit(s)
    for line in summary_lines(record):
        print(line)
    paths = write_audit_report(record, s.out)
    print(f"Files: {s.out}/audit.json, {paths[0]}, {paths[1]}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from unlearnlm.report.run import build_report

    paths = build_report(args.run_dir, before=args.before, after=args.after,
                         retain=args.retain, out=args.out, audit=args.audit)
    for path in paths:
        print(path)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from unlearnlm.bench.results import table_markdown
    from unlearnlm.bench.runner import run_bench

    s = settings_from_args(BenchSettings, args)
    results = run_bench(s)
    if s.benchmark != "lm_extraction":
        print(results["table"])
        print("\nFiles: " + ", ".join(results["files"].values()))
        return 0
    if s.audit:  # each method's audit as a report of its own, beside its audit.json
        from unlearnlm.report.audit import write_audit_report

        for name in s.audited_methods:
            folder = Path(s.out) / "audit" / name
            write_audit_report(json.loads((folder / "audit.json").read_text()), folder)
    print(table_markdown(results["rows"]))
    print()
    for claim in results["claims"]:
        print(f"{claim['result']:11s} {claim['claim']} ({claim['measured']})")
    print("\nFiles: " + ", ".join(results["files"].values()))
    return 0


def cmd_sisa_train(args: argparse.Namespace) -> int:
    from unlearnlm.train.sisa import sisa_train

    s = settings_from_args(SisaTrainSettings, args)
    record = sisa_train(s)
    print(f"Trained {s.shards} shards of {s.slices} slices ({record['shard_sizes']} texts) in "
          f"{record['seconds']:.0f} s. SISA folder: {s.out}")
    return 0


def cmd_sisa_forget(args: argparse.Namespace) -> int:
    from unlearnlm.train.sisa import sisa_forget

    s = settings_from_args(SisaForgetSettings, args)
    deletion = sisa_forget(s)["deletions"][-1]
    shards = ", ".join(f"shard {k} from slice {r}"
                       for k, r in deletion["retrained_from_slice"].items())
    print(f"Forgot {deletion['texts']} texts in {deletion['seconds']:.0f} s, retraining "
          f"{shards}. SISA folder: {s.out}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from unlearnlm.data.fetch import data_set, fetch
    from unlearnlm.paths import data_cache

    s = settings_from_args(DataSettings, args)
    for name in args.names:
        data_set(name)  # every name checked before anything downloads
    for name in args.names:
        written = fetch(name, s.github_raw_url, progress=not args.quiet, force=s.force)
        state = f"{len(written)} files written" if written else "already present"
        print(f"{name}: {state} ({data_cache()})")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from unlearnlm.data.fetch import listing

    for row in listing():
        if row["state"] == "missing":
            how = row["fetch"] or "not downloadable (see docs/data.md)"
            print(f"{row['name']:14s} missing        {how}")
        else:
            fix = f" (complete it: {row['fetch']})" if row["state"] == "partial" and row["fetch"] \
                else ""
            print(f"{row['name']:14s} {row['state']:14s} {row['path']}{fix}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from unlearnlm.methods.losses import METHODS

    for name, method in METHODS.items():
        weights = json.dumps(method.weights)
        iur = "drops forgotten samples" if method.iterative_refinement else "no dropping"
        print(f"{name:12s} {weights}  ({iur}) {method.summary}")
    return 0


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    for noisy in ("transformers", "sentence_transformers", "accelerate", "httpx", "urllib3",
                  "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # import-time notices of optional kernels this CPU build does not have (torchao's triton
    # and CUDA libraries, torch's pytree deprecations): nothing a user can act on
    # huggingface_hub warns on every retry of a refused connection before it gives up; the one
    # error line that follows says what happened and what to do
    for optional in ("torchao", "torch.utils._pytree", "huggingface_hub"):
        logging.getLogger(optional).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.quiet)
    if args.func in (cmd_unlearn, cmd_finetune):
        relaunched = _start_missing_processes(sys.argv[1:] if argv is None else argv)
        if relaunched is not None:
            return relaunched
    try:
        return args.func(args)
    except UnlearnError as exc:
        print(f"unlearnlm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unlearnlm: interrupted; nothing was written to the output directory",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


