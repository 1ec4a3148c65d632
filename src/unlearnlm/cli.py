"""The ``unlearnlm`` command: ``unlearn`` and ``methods`` (see ``unlearnlm -h``).

Every field of :class:`~unlearnlm.settings.UnlearnConfig` is a flag of ``unlearn`` (``lr`` is
``--lr``, ``prefix_tokens`` is ``--prefix-tokens``); flags override ``--config FILE.yaml``, which
overrides the defaults. Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from unlearnlm.errors import UnlearnError
from unlearnlm.settings import UnlearnConfig

log = logging.getLogger("unlearnlm")


def _flag_type(annotation: str):
    if "bool" in annotation:
        return None
    if annotation.startswith("int"):
        return _int_or_null if "None" in annotation else int
    if annotation.startswith("float"):
        return float
    return str


def _int_or_null(value: str) -> int | None:
    return None if value.lower() in ("none", "null", "all") else int(value)


def _loss_weight(value: str) -> tuple[str, float]:
    name, sep, weight = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT, got '{value}'")
    return name.strip(), float(weight)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, default None so that YAML and defaults apply underneath."""
    defaults = UnlearnConfig.__dataclass_fields__
    for f in dataclasses.fields(UnlearnConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {_default_of(defaults[f.name])})"
        annotation = str(f.type)
        if f.name == "loss_weights":
            parser.add_argument("--loss-weight", dest="loss_weights", action="append",
                                type=_loss_weight, metavar="TERM=W", help=f.metadata["help"])
        elif f.name == "adam_betas":
            parser.add_argument(flag, nargs=2, type=float, metavar=("B1", "B2"), help=help_text)
        elif "bool" in annotation:
            parser.add_argument(flag, action="store_const", const=True, help=help_text)
        else:
            parser.add_argument(flag, type=_flag_type(annotation), help=help_text)


def _default_of(f: dataclasses.Field) -> object:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearnlm",
        description="Make a language model forget specific texts, and measure both sides.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("unlearn", help="unlearn a forget set (ICU by default)")
    run.add_argument("--config", help="YAML file of settings (flags override it)")
    run.add_argument("--resume", metavar="OUT",
                     help="carry on a killed run from its last finished epoch (its own settings)")
    add_config_flags(run)
    run.set_defaults(func=cmd_unlearn)

    ft = sub.add_parser("finetune", help="fine-tune a model on texts until it memorises them")
    ft.add_argument("--model", required=True, help="base model (as for unlearn)")
    ft.add_argument("--data", required=True, help="training texts (.jsonl, .csv, .txt)")
    ft.add_argument("--out", required=True, help="output directory for the fine-tuned model")
    ft.add_argument("--max-epochs", type=int, default=30, help="at most this many epochs")
    ft.add_argument("--lr", type=float, default=1e-4, help="learning rate (AdamW)")
    ft.add_argument("--batch-size", type=int, default=8, help="texts per step")
    ft.add_argument("--target-accuracy", type=float, default=0.95,
                    help="stop once mean suffix token accuracy reaches this")
    ft.add_argument("--prefix-tokens", type=int, default=50, help="prefix length in tokens")
    ft.add_argument("--suffix-tokens", type=_int_or_null, default=50,
                    help="suffix length in tokens ('all': the rest)")
    ft.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    ft.add_argument("--seed", type=int, default=42)
    ft.add_argument("--trainable-layers", type=int, default=None,
                    help="train only the last N transformer blocks (default: all)")
    ft.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ft.set_defaults(func=cmd_finetune)

    demo = sub.add_parser("demo", help="make SmolLM2 leak fictitious records, then forget some")
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    demo.add_argument("--model", default="smollm2-135m", help="base model (default smollm2-135m)")
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="measure forgetting, fluency, downstream skill, privacy")
    ev.add_argument("--model", required=True, help="model to evaluate (as for unlearn)")
    ev.add_argument("--forget", help="forget set (.jsonl, .csv, .txt) for forget and mia")
    ev.add_argument("--nonmember", help="texts the model never saw (default: the extraction "
                    "benchmark's val split)")
    ev.add_argument("--tasks", help="comma-separated task names (default: all)")
    ev.add_argument("--limit", type=int, help="at most N documents/questions/non-members a task")
    ev.add_argument("--backend", choices=["ours", "harness"], default="ours",
                    help="who scores the zero-shot choice tasks and lambada: our implementation "
                    "(default) or lm-evaluation-harness (needs unlearnlm[harness]; other tasks "
                    "stay ours)")
    ev.add_argument("--prefix-tokens", type=int, default=50, help="prefix length in tokens")
    ev.add_argument("--suffix-tokens", type=_int_or_null, default=50,
                    help="suffix length in tokens ('all': the rest)")
    ev.add_argument("--judge-url", help="OpenAI-compatible API root (e.g. "
                    "http://127.0.0.1:8000/v1): an LLM judge scores the forget generations 0-10")
    ev.add_argument("--judge-model", help="model name for the judge (needed with --judge-url)")
    ev.add_argument("--judge-key-env", help="environment variable holding the judge's API key "
                    "(default: OPENAI_API_KEY when set; local servers may need none)")
    ev.add_argument("--original", help="also evaluate this model (the one before unlearning) "
                    "into OUT/original/eval.json")
    ev.add_argument("--retain", help="also evaluate this model (trained without the forget set) "
                    "into OUT/retain/eval.json")
    ev.add_argument("--el-n", type=int, default=10, help="n of the extraction likelihood EL_n")
    ev.add_argument("--out", required=True, help="output directory for eval.json")
    ev.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="write report.md and report.html for an unlearn run")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of an unlearn run")
    for side, what in (("before", "the original model"), ("after", "the unlearned model"),
                       ("retain", "a model trained without the forget set")):
        rep.add_argument(f"--{side}", metavar="P", help=f"eval.json (or its folder) of {what} "
                         f"(default: RUN_DIR/eval-{side}/eval.json when it exists)")
    rep.add_argument("--out", metavar="DIR", help="where to write the report (default RUN_DIR)")
    rep.set_defaults(func=cmd_report)

    bench = sub.add_parser("bench", help="the paper's comparison: make a model leak a forget "
                           "set, unlearn it with every method, evaluate all, tabulate")
    add_bench_flags(bench)
    bench.set_defaults(func=cmd_bench)

    methods = sub.add_parser("methods", help="list the methods and their loss weights")
    methods.set_defaults(func=cmd_methods)
    return parser


def cmd_unlearn(args: argparse.Namespace) -> int:
    from unlearnlm.train.unlearn import unlearn

    if args.resume:
        record = unlearn(resume=args.resume)
        _print_done(record)
        return 0
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(UnlearnConfig)}
    if values.get("loss_weights"):
        values["loss_weights"] = dict(values["loss_weights"])
    config = UnlearnConfig.from_sources(args.config, **values)
    config.require_paths()
    _print_done(unlearn(config))
    return 0


def _print_done(record: dict) -> None:
    stopped = record["stopped"]
    print(
        f"Done after {stopped['epoch']} epochs ({stopped['reason']}); "
        f"{record['epochs'][-1]['active']} of {record['forget_set']['samples']} samples still "
        f"active. Model and run.json in {record['config']['out']}"
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    from unlearnlm.train.finetune import finetune

    record = finetune(
        args.model, args.data, args.out, max_epochs=args.max_epochs, lr=args.lr,
        batch_size=args.batch_size, target_accuracy=args.target_accuracy,
        prefix_tokens=args.prefix_tokens, suffix_tokens=args.suffix_tokens,
        mixed_precision=args.mixed_precision, seed=args.seed,
        trainable_layers=args.trainable_layers, overwrite=args.overwrite,
    )
    state = "memorised" if record["memorised"] else "NOT memorised (raise --max-epochs or --lr)"
    print(f"Suffix token accuracy {record['suffix_accuracy']:.3f} after "
          f"{len(record['epochs'])} epochs: {state}. Model in {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from unlearnlm.demo import DemoSettings, run_demo

    run_demo(args.out, DemoSettings(model=args.model))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from unlearnlm.data.texts import read_records, split_records
    from unlearnlm.evaluate.suite import (
        aggregate_table,
        evaluate,
        extraction_nonmembers,
        plan_tasks,
        write_results,
    )
    from unlearnlm.lm.loading import load_model

    tasks = plan_tasks(args.tasks, has_forget=bool(args.forget))
    judge = _judge_settings(args, tasks)
    if args.backend == "harness":
        from unlearnlm.evaluate.harness import require_lm_eval

        require_lm_eval()  # before the model loads
    forget = read_records(args.forget, role="forget") if args.forget else None
    nonmember = None
    if forget and {"forget", "mia"} & set(tasks):
        nonmember = (read_records(args.nonmember, role="nonmember")[: args.limit]
                     if args.nonmember else extraction_nonmembers(args.limit))
    split = {"prefix_tokens": args.prefix_tokens, "suffix_tokens": args.suffix_tokens}
    runs = [("", args.model), ("original", args.original), ("retain", args.retain)]
    for name, model_path in [(n, m) for n, m in runs if m]:
        model, tokenizer, _ = load_model(model_path)
        result = evaluate(
            model, tokenizer, tasks=tasks, limit=args.limit, el_n=args.el_n,
            forget=split_records(forget, tokenizer, **split) if forget else None,
            nonmember=split_records(nonmember, tokenizer, **split, role="nonmember")
            if nonmember else None,
            judge=judge, backend=args.backend,
        )
        result["settings"].update(model=model_path, forget=args.forget, role=name or "model",
                                  nonmember=args.nonmember
                                  or ("extraction val split" if nonmember else None), **split)
        path = write_results(result, os.path.join(args.out, name) if name else args.out)
        print(f"== {name or 'model'}: {model_path}")
        print(aggregate_table(result))
        print(f"Per-sample results in {path}")
        del model
    return 0


def _judge_settings(args: argparse.Namespace, tasks: list[str]):
    """The LLM judge of ``eval`` from the --judge-* flags, or None without --judge-url."""
    from unlearnlm.evaluate.judge import JudgeSettings

    if not args.judge_url:
        if args.judge_model or args.judge_key_env:
            raise UnlearnError("--judge-model and --judge-key-env need --judge-url; give the "
                               "judge's API root, e.g. --judge-url http://127.0.0.1:8000/v1")
        return None
    if not args.judge_model:
        raise UnlearnError("--judge-url needs --judge-model; give the name of a model the judge "
                           "server serves, e.g. --judge-model gpt-4o")
    if "forget" not in tasks:
        raise UnlearnError("the LLM judge scores the forget task; add forget to --tasks and give "
                           "--forget, or leave out --judge-url")
    return JudgeSettings(args.judge_url, args.judge_model, api_key_env=args.judge_key_env)


def cmd_report(args: argparse.Namespace) -> int:
    from unlearnlm.report.run import build_report

    paths = build_report(args.run_dir, before=args.before, after=args.after,
                         retain=args.retain, out=args.out)
    for path in paths:
        print(path)
    return 0


def _float_or_null(value: str) -> float | None:
    return None if value.lower() in ("none", "null", "off") else float(value)


def add_bench_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per BenchSettings field; a flag left out keeps the field's default."""
    from unlearnlm.bench.runner import BenchSettings

    defaults = BenchSettings.__dataclass_fields__
    for f in dataclasses.fields(BenchSettings):
        flag = "--" + f.name.replace("_", "-")
        default = _default_of(defaults[f.name])
        shown = ",".join(default) if isinstance(default, list) else default
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        annotation = str(f.type)
        if annotation == "bool":
            parser.add_argument(flag, action="store_const", const=True,
                                default=argparse.SUPPRESS, help=help_text)
            continue
        kind = {"int | None": _int_or_null, "float | None": _float_or_null}.get(annotation)
        parser.add_argument(flag, type=kind or _flag_type(annotation),
                            default=argparse.SUPPRESS, help=help_text)


def cmd_bench(args: argparse.Namespace) -> int:
    from unlearnlm.bench.results import table_markdown
    from unlearnlm.bench.runner import BenchSettings, run_bench

    names = [f.name for f in dataclasses.fields(BenchSettings)]
    results = run_bench(BenchSettings(**{n: getattr(args, n) for n in names if hasattr(args, n)}))
    print(table_markdown(results["rows"]))
    print()
    for claim in results["claims"]:
        print(f"{claim['result']:11s} {claim['claim']} ({claim['measured']})")
    print("\nFiles: " + ", ".join(results["files"].values()))
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
    for noisy in ("transformers", "sentence_transformers", "accelerate", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
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


