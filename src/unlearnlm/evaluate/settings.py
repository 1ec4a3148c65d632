"""``EvalSettings``: everything ``unlearnlm eval`` needs, checked before a model loads."""

from __future__ import annotations

from dataclasses import dataclass

from unlearnlm.data import eval_sets
from unlearnlm.data.texts import Sample, read_records, split_records
from unlearnlm.errors import UnlearnError
from unlearnlm.evaluate.judge import JudgeSettings
from unlearnlm.evaluate.suite import TASKS, plan_tasks
from unlearnlm.lm.guards import BASELINES, guarded
from unlearnlm.lm.interface import LM
from unlearnlm.settings import Settings, name_list, setting, shared


@dataclass
class EvalSettings(Settings):
    """The models, texts and tasks of one evaluation; ``eval.json`` records what it used."""

    command = "eval"
    required = ("model", "out")

    model: str = shared("model", help="model to evaluate (directory, hub id, .gguf, "
                        "smollm2-135m, or a SISA folder: its ensemble)")
    forget: str | None = setting(None, "forget set (.jsonl, .csv, .txt) for forget and mia")
    nonmember: str | None = setting(
        None, "texts the model never saw; null: the extraction benchmark's val split")
    tasks: str | None = setting(
        None, f"comma-separated task names: {', '.join(TASKS)}; dialogue: its four sets; null: "
        "all but the four dialogue sets' own names, less forget and mia without --forget; with "
        "--wmdp or --mmlu: none besides those")
    limit: int | None = setting(
        None, "at most N documents/questions/non-members a task; null: all", positive=True)
    backend: str = setting(
        "ours", "who scores the zero-shot choice tasks and lambada: our implementation or "
        "lm-evaluation-harness (needs unlearnlm[harness]; other tasks stay ours)",
        choices=("ours", "harness"))
    wmdp: list[str] = setting(
        [], "WMDP question files to score (a comma list; each .jsonl, .json or .parquet with "
        "question, choices, answer), or WMDP's configs bio, chem, cyber once fetched "
        "(`unlearnlm data fetch wmdp`); accuracy by log-likelihood of the lettered answers")
    mmlu: str | None = setting(
        None, "MMLU questions to score as the mmlu task: a file (question, subject, choices, "
        "answer), a folder with a copy of cais/mmlu's parquet files, or 'mmlu' once fetched "
        "(`unlearnlm data fetch mmlu`); --backend harness runs lm-eval's mmlu tasks on it")
    mmlu_subjects: list[str] = setting(
        [], "a comma list of MMLU subjects to score (e.g. anatomy,astronomy); empty: all in "
        "--mmlu")
    prefix_tokens: int = shared("prefix_tokens")
    suffix_tokens: int | None = shared("suffix_tokens")
    wrap: str | None = setting(
        None, "evaluate --model behind an inference-time baseline built from --forget, its "
        f"weights unchanged: {', '.join(BASELINES)} (see docs/methods.md); null: the model "
        "itself. --original and --retain are evaluated as they are", choices=BASELINES)
    icul_pool: str | None = setting(
        None, "--wrap icul: texts not in the forget set whose continuations follow the forget "
        "prefixes in context (the pool of `unlearnlm unlearn`)")
    icul_kept: str | None = setting(
        None, "--wrap icul: texts shown whole with their true continuation (kept texts); null: "
        "--icul-examples texts of --icul-pool")
    icul_examples: int = shared("icul_examples")
    guard_opening_tokens: int = shared("guard_opening_tokens")
    filter_ngram: int = shared("filter_ngram")
    seed: int = shared("seed", help="seed of icul's draw of pool and kept texts")
    judge_url: str | None = setting(
        None, "OpenAI-compatible API root (e.g. http://127.0.0.1:8000/v1): an LLM judge scores "
        "the forget generations 0-10")
    judge_model: str | None = setting(None, "model name for the judge (needed with --judge-url)")
    judge_key_env: str | None = setting(
        None, "environment variable holding the judge's API key; null: OPENAI_API_KEY when set "
        "(local servers may need none)")
    original: str | None = setting(
        None, "also evaluate this model (the one before unlearning) into OUT/original/eval.json")
    retain: str | None = setting(
        None, "also evaluate this model (trained without the forget set) into "
        "OUT/retain/eval.json")
    el_n: int = shared("el_n")
    out: str = setting("", "output directory for eval.json")

    def check(self) -> None:
        self.wmdp = name_list(self.wmdp)
        self.mmlu_subjects = name_list(self.mmlu_subjects)
        tasks = self.planned_tasks()
        self.question_sets()  # a malformed or missing question file fails before a model loads
        self._check_wrap()
        if not self.judge_url:
            if self.judge_model or self.judge_key_env:
                raise UnlearnError("--judge-model and --judge-key-env need --judge-url; give the "
                                   "judge's API root, e.g. --judge-url http://127.0.0.1:8000/v1")
            return
        if not self.judge_model:
            raise UnlearnError("--judge-url needs --judge-model; give the name of a model the "
                               "judge server serves, e.g. --judge-model gpt-4o")
        if "forget" not in tasks:
            raise UnlearnError("the LLM judge scores the forget task; add forget to --tasks and "
                               "give --forget, or leave out --judge-url")
        self.judge()  # the judge's own checks (its URL, its key variable)

    def _check_wrap(self) -> None:
        if self.wrap is None:
            if self.icul_pool or self.icul_kept:
                raise UnlearnError("--icul-pool and --icul-kept build --wrap icul; add "
                                   "--wrap icul or leave them out")
            return
        if not self.forget:
            raise UnlearnError(f"--wrap {self.wrap} is built from the forget set; give --forget")
        if self.wrap == "icul" and not self.icul_pool:
            raise UnlearnError("--wrap icul needs --icul-pool: texts not in the forget set whose "
                               "continuations it shows after the forget prefixes")
        if self.wrap != "icul" and (self.icul_pool or self.icul_kept):
            raise UnlearnError(f"--icul-pool and --icul-kept apply to --wrap icul, not --wrap "
                               f"{self.wrap}; leave them out")
        if self.backend == "harness":
            raise UnlearnError(f"--wrap {self.wrap} is not one Hugging Face model, which the "
                               "harness needs; use --backend ours")

    def guarded(self, lm: LM, forget: list[Sample]) -> LM:
        """``lm`` behind the ``--wrap`` baseline built from the split ``forget`` samples (icul's
        texts split the same way), or ``lm`` itself without ``--wrap``."""
        if self.wrap is None:
            return lm
        split = {"prefix_tokens": self.prefix_tokens, "suffix_tokens": self.suffix_tokens}

        def texts(path: str | None, role: str) -> list[Sample] | None:
            if not path:
                return None
            return split_records(read_records(path, role=role), lm.tokenizer, **split,
                                 role=role)

        return guarded(self.wrap, lm, forget, pool=texts(self.icul_pool, "pool") or (),
                       kept=texts(self.icul_kept, "retain"),
                       opening_tokens=self.guard_opening_tokens,
                       icul_examples=self.icul_examples, ngram=self.filter_ngram, seed=self.seed)

    def question_sets(self) -> tuple[dict[str, list[dict]], list[dict] | None]:
        """The checked rows of ``--wmdp`` ({label: rows}) and of ``--mmlu`` (its subjects in
        ``--mmlu-subjects`` only)."""
        wmdp: dict[str, list[dict]] = {}
        for spec in self.wmdp:
            label, path = eval_sets.wmdp_file(spec)
            if label in wmdp:
                raise UnlearnError(f"--wmdp names {label} twice; give each file once")
            wmdp[label] = eval_sets.question_rows(path)
        if self.mmlu_subjects and not self.mmlu:
            raise UnlearnError("--mmlu-subjects picks subjects of --mmlu; give --mmlu too")
        mmlu = eval_sets.mmlu_rows(self.mmlu) if self.mmlu else None
        if mmlu is not None and self.mmlu_subjects:
            known = {str(row["subject"]) for row in mmlu}
            unknown = [s for s in self.mmlu_subjects if s not in known]
            if unknown:
                raise UnlearnError(f"--mmlu-subjects: {unknown[0]!r} is not a subject of "
                                   f"{self.mmlu}; it has {', '.join(sorted(known))}")
            mmlu = [row for row in mmlu if str(row["subject"]) in self.mmlu_subjects]
        return wmdp, mmlu

    def planned_tasks(self) -> list[str]:
        """The tasks to run: ``tasks`` validated, or every task (less forget and mia without a
        forget set; none with question files and no --tasks)."""
        if self.tasks is None and (self.wmdp or self.mmlu):
            return []
        return plan_tasks(self.tasks, has_forget=bool(self.forget))

    def judge(self) -> JudgeSettings | None:
        """The LLM judge's settings, or None without ``judge_url``."""
        if not self.judge_url:
            return None
        return JudgeSettings(self.judge_url, self.judge_model or "",
                             api_key_env=self.judge_key_env)
