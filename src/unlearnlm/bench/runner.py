"""``unlearnlm bench``: the paper's comparison, reproduced on a model that was made to leak.

The protocol (as TOFU does it: Maini et al. 2024), step by step:

1. Data. The forget set is one of the extraction benchmark's (``lm_extraction_32_0``: 32 Pile
   samples). Each sample is its prefix + suffix (the last 100 GPT-2 tokens, what the paper
   unlearns), split again 50/50 by the model's own tokens. Retain texts (default 32) and an
   analogous pool (default 300) come from the rest of the benchmark's train split; calibration
   texts and non-members from its val split. Seeded and disjoint; written to ``out/data``.
2. Models. The *leaky* model: the base fine-tuned on forget + retain texts until it recites them.
   The *retain* model: the base fine-tuned on the retain texts alone, what the model would be had
   it never seen the forget set. Both are cached, keyed by a hash of their inputs.
3. Unlearning. Every method starts from the leaky model, with the same data and settings
   (``out/methods/NAME``). The ``dp`` row unlearns nothing: it is the leaky model's fine-tuning
   under DP-SGD (``bench.dp``). The ``sisa`` row is a SISA ensemble trained on forget + retain
   texts, from which the forget set is deleted exactly (``bench.sisa``). An inference-time
   baseline (``guard-prompt``, ``icul``,
   ``guard-filter``) trains nothing either: the leaky model is wrapped, and its generation cost
   is timed (``bench.guards``).
4. Evaluation. The leaky model, the retain model and every method's result
   (``out/eval/NAME/eval.json``). With ``audit``, also the robustness audit of every method's
   result, with the leaky model as the original, the pool as the related texts and the
   non-members as the never-seen texts (``out/audit/NAME/audit.json``; the leaky model is
   attacked once, in ``out/audit/leaky``).
5. Results. ``out/results.json``, ``results.csv``, ``results.md`` and
   ``forgetting_vs_utility.png`` (see ``bench.results``).

Each step skips what an earlier run into the same ``out`` finished, so a killed bench resumes
when the same command is run again (a method killed mid-run carries on from its last epoch).

``--benchmark tofu`` and ``--benchmark muse-news`` run the same protocol on TOFU's and MUSE-News's
data (``bench.tofu``, ``bench.muse``): the target model (fine-tuned on forget + retain) and the
retain model are cached, every unlearning method starts from the target model, and each model is
scored with the benchmark's own metrics (``out/eval/NAME/BENCHMARK.json``) into
``results.json`` and ``results.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearnlm.bench.dp import DP_METHOD, run_dp
from unlearnlm.bench.sisa import SISA_METHOD, run_sisa
from unlearnlm.data.texts import Record, read_records, texts_sha256
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.guards import BASELINES
from unlearnlm.methods.losses import METHODS
from unlearnlm.rundir import write_text_atomic
from unlearnlm.settings import Settings, name_list, setting, shared

log = logging.getLogger(__name__)

ROLES = ("forget", "retain", "pool", "calibration", "nonmember")
# settings that only change what is measured, not what is trained: free to differ on a re-run
# (the dp row's settings are among them: its folder checks its own, so that an older run stays
# usable)
EVAL_ONLY = ("out", "methods", "tasks", "limit", "nonmember", "nonmember_size", "audit",
             "audit_attacks", "audit_el", "dp_epsilon", "dp_delta", "dp_max_grad_norm",
             "sisa_shards", "sisa_slices", "sisa_epochs", "sisa_lr", "sisa_lora_rank",
             "guard_opening_tokens", "icul_examples", "filter_ngram", "answer_tokens",
             "privleak_attack")
BENCHMARKS = ("lm_extraction", "tofu", "muse-news")


def _default_tasks() -> list[str]:
    from unlearnlm.evaluate.suite import DEFAULT_TASKS

    return list(DEFAULT_TASKS)


@dataclass
class BenchSettings(Settings):
    """Everything ``unlearnlm bench`` needs; ``results.json`` records all of it."""

    command = "bench"

    benchmark: str = setting(
        "lm_extraction", "lm_extraction: the extraction benchmark's forget sets (--forget-set); "
        "tofu: TOFU's fictitious authors (--split); muse-news: MUSE's BBC news",
        choices=BENCHMARKS)
    split: str = setting("forget10", "tofu: the forget split (2, 10 or 20 authors of 200)",
                         choices=("forget01", "forget05", "forget10"))
    subset: float | None = setting(
        None, "tofu and muse-news: keep this fraction of every set (the first ones; the split's "
        "ratios hold), for quick runs; null: all", interval="(0, 1]")
    answer_tokens: int = setting(
        200, "tofu and muse-news: most tokens generated per answer (TOFU: 200, as "
        "open-unlearning; MUSE's VerbMem 128 and KnowMem 32 at most)", positive=True)
    privleak_attack: str = setting(
        "min_k++", "muse-news: the membership score behind PrivLeak (Min-K%++, or MUSE's "
        "original Min-K%), k = 0.4", choices=("min_k++", "min_k"))
    forget_set: str = setting(
        "lm_extraction_32_0", "forget set: a benchmark name (lm_extraction_{N}_{k}, N in 1, 4, 8, "
        "32, 128, k in 0..4; or {domain}_8_{k}) or a .csv/.jsonl/.txt file")
    model: str = shared("model", "smollm2-135m",
                        "base model (directory, hub id, .gguf or smollm2-135m)")
    out: str = setting("runs/bench", "output directory (a re-run into it resumes)")
    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={
        "help": "methods to compare, a comma list (see `unlearnlm methods`); 'dp': no "
        "unlearning, the leaky model's fine-tuning under DP-SGD at --dp-epsilon; the "
        "inference-time baselines guard-prompt, icul and guard-filter wrap the leaky model"})
    retain: str | None = setting(
        None, "retain texts file (null: --retain-size other samples of the benchmark's train "
        "split); the leaky and the retain model learn them; they join the analogous pool")
    retain_size: int = setting(32, "retain samples drawn from the train split", positive=True)
    pool: str | None = setting(
        None, "analogous pool file (null: --pool-size further samples of the train split)")
    pool_size: int = setting(300, "analogous pool samples drawn from the train split",
                             positive=True)
    calibration: str | None = setting(
        None, "never-seen texts for the unlearning thresholds, --calibrate-on (null: "
        "--calibration-size samples of the benchmark's val split)")
    calibration_size: int = setting(32, "calibration samples drawn from the val split",
                                    positive=True)
    nonmember: str | None = setting(
        None, "never-seen texts for the membership audit and as the forgetting yardstick "
        "(null: --nonmember-size other samples of the val split)")
    nonmember_size: int = setting(32, "non-member samples drawn from the val split",
                                  positive=True)
    prefix_tokens: int = shared("prefix_tokens")
    suffix_tokens: int | None = shared("suffix_tokens")
    lr: float = shared("lr", 5e-5, "unlearning learning rate, every method (paper: 5e-6 for "
                       "20-30 epochs; higher so that a CPU run ends)")
    max_epochs: int = shared("max_epochs", 10, "unlearning epochs at most, every method")
    batch_size: int = shared("batch_size", 8, "texts per step, fine-tuning and unlearning")
    trainable_layers: int | None = shared(
        "trainable_layers", None, "fine-tuning and unlearning train only the last N transformer "
        "blocks; null: all (the paper)")
    mixed_precision: str = shared("mixed_precision", "no", "'no', 'bf16' or 'fp16' for "
                                  "fine-tuning and unlearning (bf16 halves a CPU step where it "
                                  "is supported)")
    drop_rule: str = setting("and", "IUR drop test: 'and' (paper) or 'or' (official code)",
                             choices=("and", "or"))
    calibration_quantile: float = setting(
        0.5, "quantile of never-seen texts' BLEU/BERTScore that a sample must score at or under "
        "to drop (0.5: the median)", interval="(0, 1)")
    calibration_stop: str = setting(
        "mean", "stop thresholds from never-seen texts' 'mean' EL/MA (Jang et al.) or their "
        "'quantile' (median, as the drop test)", choices=("mean", "quantile"))
    el_every_epoch: bool = setting(
        False, "score EL10 after every unlearning epoch (off: only once MA is under its "
        "threshold, which saves most of the scoring time)")
    guard_ppl_factor: float | None = setting(
        None, "collapse guard of the loop; null: off, as in the paper (so collapses show)",
        positive=True)
    finetune_lr: float = setting(1e-4, "learning rate that makes the leaky and retain models",
                                 positive=True)
    finetune_epochs: int = setting(30, "fine-tuning epochs at most", positive=True)
    finetune_target: float = setting(
        0.95, "fine-tuning stops once mean suffix token accuracy reaches this",
        interval="(0, 1]")
    tasks: list[str] = field(default_factory=_default_tasks, metadata={
        "help": "evaluation tasks, a comma list (see `unlearnlm eval`)"})
    limit: int | None = setting(
        100, "items per evaluation task (documents, questions, dialogues); null: all of them "
        "(hours per model on a CPU)", positive=True)
    seed: int = shared("seed", 42, "seed of the data draws, fine-tuning and unlearning")
    audit: bool = setting(
        False, "also audit every method's model (`unlearnlm audit`: relearning, quantisation "
        "and decoding attacks) with the leaky model as the original, the pool as the related "
        "texts and the non-members as the never-seen texts")
    audit_attacks: str | None = setting(
        None, "the audit's attacks, a comma list (see `unlearnlm audit --help`); null: all")
    audit_el: bool = setting(True, "score EL10 in the audit (its costliest score)")
    dp_epsilon: float = setting(8.0, "the dp row: the epsilon its DP-SGD fine-tuning spends over "
                                "--finetune-epochs", positive=True)
    dp_delta: float = setting(1e-5, "the dp row: delta of its (epsilon, delta) guarantee",
                              interval="(0, 1)")
    dp_max_grad_norm: float = setting(1.0, "the dp row: each text's gradient is clipped to this "
                                      "L2 norm", positive=True)
    sisa_shards: int = setting(4, "the sisa row: shards, one LoRA adapter each", positive=True)
    sisa_slices: int = setting(2, "the sisa row: slices per shard, a checkpoint after each",
                               positive=True)
    sisa_epochs: int = setting(10, "the sisa row: epochs of each stage", positive=True)
    sisa_lr: float = setting(5e-3, "the sisa row: learning rate of the adapters", positive=True)
    sisa_lora_rank: int = setting(8, "the sisa row: LoRA rank of every shard's adapter",
                                  positive=True)
    guard_opening_tokens: int = shared("guard_opening_tokens")
    icul_examples: int = shared("icul_examples")
    filter_ngram: int = shared("filter_ngram")

    def check(self) -> None:
        from unlearnlm.evaluate.suite import resolve_tasks

        self.methods = name_list(self.methods)
        known = [*METHODS, DP_METHOD, SISA_METHOD, *BASELINES]
        if self.benchmark != "lm_extraction":
            known = list(METHODS)  # the rows beside unlearning need the extraction protocol
        unknown = [m for m in self.methods if m not in known]
        if unknown or not self.methods:
            problem = f"unknown method '{unknown[0]}'" if unknown else "no method given"
            scope = "" if self.benchmark == "lm_extraction" else f" for {self.benchmark}"
            raise UnlearnError(f"{problem}; known methods{scope}: {', '.join(known)}")
        if self.audit and self.benchmark != "lm_extraction":
            raise UnlearnError(f"--audit runs on the lm_extraction benchmark, not "
                               f"{self.benchmark}; drop --audit")
        self.tasks = name_list(self.tasks)
        resolve_tasks(self.tasks)
        for method in self.trained_methods:  # the loop's own checks, before any work
            if method not in (DP_METHOD, SISA_METHOD):
                self.unlearn_settings(method)
        if self.audit:  # the attack names, checked before any work
            self.audit_settings("leaky", "leaky", {"pool": "pool.jsonl"})

    @property
    def trained_methods(self) -> list[str]:
        """The methods with weights of their own (dp included; the others, the inference-time
        baselines, wrap the leaky model)."""
        return [m for m in self.methods if m not in BASELINES]

    @property
    def audited_methods(self) -> list[str]:
        """The methods the audit attacks: those with one set of weights of their own (not the
        sisa ensemble, not the baselines)."""
        return [m for m in self.trained_methods if m != SISA_METHOD]

    def unlearn_settings(self, method: str) -> Any:
        """The loop's settings of one method (every method gets the same ones)."""
        from unlearnlm.settings import UnlearnConfig

        return UnlearnConfig(
            method=method, lr=self.lr, max_epochs=self.max_epochs, batch_size=self.batch_size,
            trainable_layers=self.trainable_layers, mixed_precision=self.mixed_precision,
            drop_rule=self.drop_rule, calibration_quantile=self.calibration_quantile,
            calibration_stop=self.calibration_stop, seed=self.seed,
            prefix_tokens=self.prefix_tokens, suffix_tokens=self.suffix_tokens,
            el_every_epoch=self.el_every_epoch, guard_ppl_factor=self.guard_ppl_factor,
            overwrite=True, quick_check=False)  # the bench evaluates (and audits) every model

    def audit_settings(self, model: str, name: str, files: dict[str, str] | None = None) -> Any:
        """The audit's settings of one model (every method gets the same ones)."""
        from unlearnlm.audit.settings import AuditSettings

        files = files or {}
        return AuditSettings(
            model=model, forget=files.get("forget", ""), related=files.get("pool"),
            nonmember=files.get("nonmember"), nonmember_limit=None, attacks=self.audit_attacks,
            el=self.audit_el, prefix_tokens=self.prefix_tokens,
            suffix_tokens=self.suffix_tokens, seed=self.seed, out=str(Path(self.out) / "audit"
                                                                      / name), overwrite=True)


# --- step 1: data ------------------------------------------------------------------------------


def _extraction_rows() -> dict[str, dict[int, Record]]:
    """The benchmark's samples by split and index, each as its prefix + suffix text."""
    from unlearnlm.paths import data_file

    path = data_file("lm_extraction/lm_extraction_text.jsonl", "lm_extraction")
    return _read_extraction(str(path))


@functools.lru_cache(maxsize=1)
def _read_extraction(path: str) -> dict[str, dict[int, Record]]:
    rows: dict[str, dict[int, Record]] = {"train": {}, "val": {}}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            name = str(row["index"]) if row["split"] == "train" else f"val-{row['index']}"
            rows[row["split"]][row["index"]] = Record(name, row["prefix"] + row["suffix"])
    return rows


def _benchmark_folders() -> list[Path]:
    from unlearnlm.paths import find_data

    found = [find_data(f"lm_extraction/{name}") for name in ("forget_sets", "domain_sets")]
    return [path.resolve() for path in found if path is not None]


def resolve_forget_set(spec: str) -> list[Record]:
    """The forget set as prefix + suffix texts: a benchmark name or file, or any texts file.

    A benchmark csv's ``text`` holds the whole 200-token sample, decoded with its spaces cleaned
    up; its ``doc_id`` is looked up in the train split instead, which holds the exact prefix and
    suffix.
    """
    path = Path(spec).expanduser()
    if not path.exists() and path.name == spec and not path.suffix:
        found = [folder / f"{spec}.csv" for folder in _benchmark_folders()]
        found = [p for p in found if p.is_file()]
        if not found:
            raise UnlearnError(
                f"no forget set named '{spec}' (looked in lm_extraction/forget_sets and "
                "domain_sets of the data folder and the data cache); names look like "
                "lm_extraction_32_0 (`unlearnlm data fetch lm_extraction` downloads them), or "
                "give a file")
        path = found[0]
    records = read_records(path, role="forget")
    if path.resolve().parent not in _benchmark_folders():
        return [Record(r.id, r.text) for r in records]
    train = _extraction_rows()["train"]
    texts = []
    for record in records:
        index = int(record.id) if record.id.isdigit() else -1
        if index not in train:
            raise UnlearnError(f"forget set {path}: doc_id {record.id!r} is not a train sample "
                               "of lm_extraction_text.jsonl")
        texts.append(train[index])
    return texts


def _draw(split: str, count: int, taken: set[str], seed: int, what: str) -> list[Record]:
    """``count`` distinct samples of a benchmark split, seeded, none of them in ``taken``."""
    rows = _extraction_rows()[split]
    order = sorted(rows)
    random.Random(f"{seed}-{split}").shuffle(order)
    chosen, seen = [], set(taken)
    for record in (rows[i] for i in order):
        if len(chosen) < count and record.text.strip() not in seen:
            chosen.append(record)
            seen.add(record.text.strip())
    if len(chosen) < count:
        raise UnlearnError(f"the {split} split has only {len(chosen)} samples left for {what}; "
                           f"lower --{what}-size")
    return chosen


def prepare_data(s: BenchSettings) -> dict[str, list[Record]]:
    """Forget, retain, pool, calibration and non-member texts: given files or seeded draws."""
    data: dict[str, list[Record]] = {"forget": resolve_forget_set(s.forget_set)}
    taken = {r.text.strip() for r in data["forget"]}
    for role, split in (("retain", "train"), ("pool", "train"), ("calibration", "val"),
                        ("nonmember", "val")):
        path = getattr(s, role)
        if path:
            data[role] = [Record(r.id, r.text) for r in read_records(path, role=role)]
        else:
            data[role] = _draw(split, getattr(s, f"{role}_size"), taken, s.seed, role)
        if role != "pool" and any(r.text.strip() in taken for r in data[role]):
            raise UnlearnError(f"the {role} texts repeat texts of the forget set or of an earlier "
                               "set (retain, pool, calibration); give disjoint texts")
        taken |= {r.text.strip() for r in data[role]}
    return data


def write_data(data: dict[str, list[Record]], folder: Path) -> dict[str, str]:
    """``folder/ROLE.jsonl`` per role and ``leaky_train.jsonl`` (forget + retain, ids prefixed
    with their role so that two given files may use the same ids; ``data`` may give its own);
    a record with its own prefix and suffix keeps them."""
    both = [Record(f"{role}-{r.id}", r.text, r.prefix, r.suffix)
            for role in ("forget", "retain") for r in data[role]]
    sets = {"leaky_train": both, **data}
    paths = {}
    for name, records in sets.items():
        text = "".join(json.dumps({"id": r.id, "text": r.text} if r.prefix is None else
                                  {"id": r.id, "prefix": r.prefix, "suffix": r.suffix},
                                  ensure_ascii=False) + "\n" for r in records)
        path = folder / f"{name}.jsonl"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_text_atomic(path, text)
        paths[name] = str(path)
    return paths


# --- step 2: the leaky and the retain model ----------------------------------------------------


def finetuned_model(kind: str, s: BenchSettings, data_file: str,
                    **extra: Any) -> tuple[Path, dict]:
    """The base model fine-tuned on ``data_file`` (``train.finetune.cached_finetune``);
    ``extra``: more of ``finetune``'s settings (they join the cache key)."""
    from unlearnlm.train.finetune import cached_finetune

    folder, record = cached_finetune(
        s.model, data_file, kind, say=lambda line: log.info("  %s", line),
        max_epochs=s.finetune_epochs, lr=s.finetune_lr, batch_size=s.batch_size,
        target_accuracy=s.finetune_target, prefix_tokens=s.prefix_tokens,
        suffix_tokens=s.suffix_tokens, mixed_precision=s.mixed_precision, seed=s.seed,
        trainable_layers=s.trainable_layers, **extra,
    )
    if not record["memorised"]:
        log.warning("  The %s model reached suffix token accuracy %.3f only, under the target "
                    "%.2f; raise --finetune-epochs or --finetune-lr", kind,
                    record["suffix_accuracy"], s.finetune_target)
    return folder, record


# --- step 3: unlearning ------------------------------------------------------------------------


def run_method(name: str, s: BenchSettings, leaky: Path, files: dict[str, str],
               folder: Path) -> dict:
    """Unlearn with one method from the leaky model; reuse or resume an earlier run."""
    from unlearnlm.train.checkpoint import CHECKPOINT, partial_dir
    from unlearnlm.train.unlearn import unlearn

    timing = folder / "bench_time.json"
    if (folder / "run.json").is_file():
        log.info("  %s: reusing the finished run in %s", name, folder)
        record = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        spent = json.loads(timing.read_text()) if timing.is_file() else {
            "wall_time_s": round(sum(record.get("timings_s", {}).values()), 1), "resumed": False}
        return {"record": record, **spent}
    resumed = (partial_dir(folder) / CHECKPOINT).is_file()
    log.info("  %s: %s", name, "resuming after its last finished epoch" if resumed
             else "unlearning, starting from the leaky model")
    clock = time.perf_counter()
    if resumed:
        record = unlearn(resume=str(folder))
    else:
        config = s.unlearn_settings(name)
        config = dataclasses.replace(
            config, model=str(leaky), forget=files["forget"], retain=files["retain"],
            pool=files["pool"], calibrate_on=files["calibration"], out=str(folder),
            calibration_cache=str(folder.parent / "calibration.json"))
        record = unlearn(config)
    spent = {"wall_time_s": round(time.perf_counter() - clock, 1), "resumed": resumed}
    write_text_atomic(timing, json.dumps(spent))
    log.info("  %s: stopped after epoch %d (%s), %.0f s", name, record["stopped"]["epoch"],
             record["stopped"]["reason"], spent["wall_time_s"])
    return {"record": record, **spent}


# --- step 4: evaluation ------------------------------------------------------------------------


def evaluate_model(name: str, model_dir: Path, s: BenchSettings,
                   data: dict[str, list[Record]], folder: Path, wrap: str | None = None) -> dict:
    """``eval.json`` of one model (with ``wrap``: the model behind that inference-time
    baseline, ``bench.guards``); an earlier one is reused when it measured the same things."""
    from unlearnlm.bench.guards import guard_stamp, wrap_leaky
    from unlearnlm.data.texts import split_records
    from unlearnlm.evaluate.suite import evaluate, resolve_tasks, write_results
    from unlearnlm.train.sisa import load_lm

    tasks = resolve_tasks(s.tasks)
    stamp = {"model": str(model_dir), "tasks": tasks, "limit": s.limit,
             "prefix_tokens": s.prefix_tokens, "suffix_tokens": s.suffix_tokens,
             "texts": texts_sha256([r.text for r in data["forget"] + data["nonmember"]])}
    if wrap:
        stamp["wrap"] = guard_stamp(wrap, s, data)
    path = folder / "eval.json"
    if path.is_file():
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("settings", {}).get("bench") == stamp:
            log.info("  %s: reusing %s", name, path)
            return result
    log.info("  %s: evaluating %s%s", name, model_dir, f" behind {wrap}" if wrap else "")
    lm = load_lm(str(model_dir))  # bench.sisa's folder: its ensemble
    tokenizer = lm.tokenizer
    split = {"prefix_tokens": s.prefix_tokens, "suffix_tokens": s.suffix_tokens}
    forget = split_records(data["forget"], tokenizer, **split)
    if wrap:
        lm = wrap_leaky(wrap, lm, s, data, forget)
    result = evaluate(
        lm, tokenizer, tasks=tasks, limit=s.limit, el_n=10, forget=forget,
        nonmember=split_records(data["nonmember"], tokenizer, **split, role="nonmember"),
    )
    result["settings"]["bench"] = stamp
    write_results(result, folder)
    del lm
    gc.collect()
    return result


# --- step 4b: the audit ---------------------------------------------------------------------


def audit_models(s: BenchSettings, leaky: Path, files: dict[str, str], out: Path) -> dict:
    """The audit of every method's model against the leaky one (module docstring, step 4);
    an earlier audit with the same settings is reused. Returns audit.json's data per method."""
    from unlearnlm.audit.run import audit_model, audit_record, read_inputs
    from unlearnlm.lm.interface import LM
    from unlearnlm.rundir import write_json

    def attacked(name: str, model: Path) -> tuple[dict, dict, dict]:
        a = s.audit_settings(str(model), name, files)
        stamp = {k: v for k, v in a.to_dict().items() if k != "out"}
        path = out / name / ("scores.json" if name == "leaky" else "audit.json")
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("stamp") == stamp:
                log.info("  %s: reusing %s", name, path)
                return saved, a, stamp
        log.info("  %s: attacking %s", name, model)
        inputs = read_inputs(a)
        lm = LM.load(str(model))
        results, details = audit_model(lm, inputs, a, name)
        del lm
        gc.collect()
        return {"results": results, "details": details, "inputs": inputs}, a, stamp

    leaky_scores, a, stamp = attacked("leaky", leaky)
    if "inputs" in leaky_scores:
        leaky_scores.pop("inputs")
        write_json(out / "leaky" / "scores.json", {**leaky_scores, "stamp": stamp})
    audits = {}
    for name in s.audited_methods:  # a baseline's weights are the leaky model's
        found, a, stamp = attacked(name, out.parent / "methods" / name)
        if "inputs" in found:
            found = audit_record(
                dataclasses.replace(a, original=str(leaky)), found["inputs"],
                {"unlearned": found["results"], "original": leaky_scores["results"]},
                {"unlearned": found["details"], "original": leaky_scores["details"]})
            found["stamp"] = stamp
            write_json(out / name / "audit.json", found)
        audits[name] = found
    return audits


# --- the whole bench ---------------------------------------------------------------------------


def _check_same_settings(s: BenchSettings, out: Path) -> None:
    """A re-run into ``out`` must train the same things; what it measures may change."""
    from unlearnlm.rundir import write_json

    defining = {k: v for k, v in dataclasses.asdict(s).items() if k not in EVAL_ONLY}
    path = out / "bench_settings.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        # a setting added since that run had its default there
        before = {**{k: v for k, v in _defaults().items() if k in defining}, **before}
        changed = sorted(k for k in set(before) | set(defining)
                         if before.get(k) != defining.get(k))
        if changed:
            shown = ", ".join(f"{k}: {before.get(k)!r} -> {defining.get(k)!r}" for k in changed)
            raise UnlearnError(f"{out} holds a bench run with other settings ({shown}); choose "
                               "another --out, or delete it to start over")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, defining)


def _defaults() -> dict[str, Any]:
    """Every bench setting's default value."""
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(BenchSettings)}


def run_bench(settings: BenchSettings | None = None) -> dict:
    """Run the whole comparison (see the module docstring); returns what results.json holds."""
    from unlearnlm.bench.guards import run_guard
    from unlearnlm.bench.results import write_results_files

    s = settings or BenchSettings()
    out = Path(s.out).expanduser().resolve()
    start = time.perf_counter()
    if s.benchmark != "lm_extraction":
        return run_qa_bench(s, out, start)
    log.info("Step 1/5  Data: forget set %s, retain, analogous pool, calibration and non-member "
             "texts", s.forget_set)
    data = prepare_data(s)
    if "icul" in s.methods and len(data["retain"]) < s.icul_examples:
        raise UnlearnError(f"icul shows {s.icul_examples} retain texts whole, and there are "
                           f"{len(data['retain'])}; lower --icul-examples or give more "
                           "retain texts")
    _check_same_settings(s, out)
    files = write_data(data, out / "data")
    log.info("  %s", ", ".join(f"{len(data[r])} {r}" for r in ROLES))

    log.info("Step 2/5  The leaky model (forget + retain) and the retain model (retain only)")
    models = {"leaky": finetuned_model("leaky", s, files["leaky_train"]),
              "retain": finetuned_model("retain", s, files["retain"])}
    leaky_dir = models["leaky"][0]

    log.info("Step 3/5  Unlearning, each method from the leaky model: %s", ", ".join(s.methods))
    runs = {name: run_dp(s, files["leaky_train"], out / "methods" / name) if name == DP_METHOD
            else run_sisa(s, files, out / "methods" / name) if name == SISA_METHOD
            else run_guard(name, s, leaky_dir, data, out / "methods" / name) if name in BASELINES
            else run_method(name, s, leaky_dir, files, out / "methods" / name)
            for name in s.methods}

    log.info("Step 4/5  Evaluating the leaky model, the retain model and every method")
    dirs = {"leaky": leaky_dir, "retain": models["retain"][0],
            **{name: leaky_dir if name in BASELINES else out / "methods" / name
               for name in s.methods}}
    evals = {name: evaluate_model(name, path, s, data, out / "eval" / name,
                                  wrap=name if name in BASELINES else None)
             for name, path in dirs.items()}
    audits = None
    if s.audit:
        log.info("Step 4/5  The audit: every method's model, attacked, against the leaky one")
        audits = audit_models(s, leaky_dir, files, out / "audit")
        if SISA_METHOD in s.methods:
            log.info("  %s: not audited (the attacks need one set of weights)", SISA_METHOD)

    log.info("Step 5/5  Results")
    results = write_results_files(out, s, data, models, runs, evals, audits)
    log.info("Bench done in %.0f s", time.perf_counter() - start)
    return results


# --- TOFU and MUSE-News ------------------------------------------------------------------------


def run_qa_bench(s: BenchSettings, out: Path, start: float) -> dict:
    """TOFU or MUSE-News: the module docstring's steps with the benchmark's data and scores."""
    from unlearnlm.bench import muse, tofu

    tofu_run = s.benchmark == "tofu"
    module: Any = tofu if tofu_run else muse
    log.info("Step 1/5  Data: %s%s%s", s.benchmark, f" {s.split}" if tofu_run else "",
             f", the first {s.subset:g} of every set" if s.subset else "")
    sets = tofu.load(s.split, s.subset) if tofu_run else muse.load(s.subset)
    data = module.training_sets(sets)
    _check_same_settings(s, out)
    files = write_data(data, out / "data")
    log.info("  %s", ", ".join(f"{len(data[r])} {r}" for r in data))

    log.info("Step 2/5  The target model (forget + retain) and the retain model (retain only)")
    loss_on = "suffix" if tofu_run else "all"  # TOFU: the loss on the answers
    models = {"target": finetuned_model(f"{s.benchmark}-target", s, files["leaky_train"],
                                        loss_on=loss_on),
              "retain": finetuned_model(f"{s.benchmark}-retain", s, files["retain"],
                                        loss_on=loss_on)}

    log.info("Step 3/5  Unlearning, each method from the target model: %s", ", ".join(s.methods))
    runs = {name: run_method(name, s, models["target"][0], files, out / "methods" / name)
            for name in s.methods}

    log.info("Step 4/5  Scoring the target model, the retain model and every method")
    dirs = {"target": models["target"][0], "retain": models["retain"][0],
            **{name: out / "methods" / name for name in s.methods}}
    evals = {name: _qa_scores(module, name, path, s, sets, out / "eval" / name)
             for name, path in dirs.items()}

    log.info("Step 5/5  Results")
    results = _write_qa_results(module, s, out, models, runs, evals)
    log.info("Bench done in %.0f s", time.perf_counter() - start)
    return results


def _qa_scores(module: Any, name: str, model_dir: Path, s: BenchSettings, sets: dict,
               folder: Path) -> dict:
    """One model's benchmark scores; an earlier file with the same stamp is reused."""
    from unlearnlm.lm.interface import LM
    from unlearnlm.rundir import write_json

    stamp = {"model": str(model_dir), "limit": s.limit, "answer_tokens": s.answer_tokens,
             "subset": s.subset, "split": s.split if s.benchmark == "tofu" else None,
             "privleak_attack": s.privleak_attack if s.benchmark == "muse-news" else None}
    path = folder / f"{s.benchmark}.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("stamp") == stamp:
            log.info("  %s: reusing %s", name, path)
            return saved["scores"]
    log.info("  %s: scoring %s", name, model_dir)
    lm = LM.load(str(model_dir))
    if s.benchmark == "tofu":
        scores = module.evaluate(lm, sets, s.limit, s.answer_tokens)
    else:
        scores = module.evaluate(lm, sets, s.limit, s.answer_tokens, s.privleak_attack)
    write_json(path, {"stamp": stamp, "scores": scores})
    del lm
    gc.collect()
    return scores


def _write_qa_results(module: Any, s: BenchSettings, out: Path, models: dict, runs: dict,
                      evals: dict) -> dict:
    """``results.json`` (settings, every model's row and where it came from) and
    ``results.md`` (the table)."""
    from unlearnlm.rundir import environment_versions, write_json

    rows = module.summarise(evals)
    for row in rows:
        run = runs.get(row["model"])
        if run is not None:
            row["wall_time_s"] = run["wall_time_s"]
            row["stopped"] = run["record"]["stopped"]
    files = {"json": str(out / "results.json"), "markdown": str(out / "results.md")}
    title = f"{s.benchmark} {s.split}" if s.benchmark == "tofu" else s.benchmark
    table = qa_table(module.COLUMNS, rows)
    results = {
        "benchmark": s.benchmark, "settings": s.to_dict(), "rows": rows, "table": table,
        "models": {kind: {"path": str(path), "suffix_accuracy": record["suffix_accuracy"],
                          "epochs": len(record["epochs"])}
                   for kind, (path, record) in models.items()},
        "versions": environment_versions(), "files": files,
    }
    write_json(out / "results.json", results)
    write_text_atomic(out / "results.md", f"# {title}\n\n{table}\n")
    return results


def qa_table(columns: tuple, rows: list[dict]) -> str:
    """A Markdown table: one row per model, the benchmark's columns, then the method's wall
    time and where it stopped."""
    head = ["model", *(label for _, label, _ in columns), "wall time (s)", "stopped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], *(fmt.format(row[key]) for key, _, fmt in columns)]
        stopped = row.get("stopped")
        cells += [f"{row['wall_time_s']:.0f}" if "wall_time_s" in row else "-",
                  f"epoch {stopped['epoch']} ({stopped['reason']})" if stopped else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
