"""Read forget, retain and pool files, and split their texts into prefix and suffix token ids.

Two steps, kept apart so that a file can be checked before any model is loaded:

- ``read_records(path)`` reads a ``.jsonl``, ``.csv`` or ``.txt`` file into ``Record`` objects
  (an id and a text, or a prefix and a suffix the user split). Any problem with the file raises
  ``UnlearnError`` with a one-line message naming the file, the line and the fix.
- ``split_records(records, tokenizer)`` tokenizes them with the model's own tokenizer into
  ``Sample`` objects: ``prefix_ids`` (what the model is prompted with) and ``suffix_ids`` (what it
  must no longer produce). As in the paper (Tang et al. 2024), a long text keeps only its last
  ``prefix_tokens + suffix_tokens`` tokens.

``file_sha256`` and ``texts_sha256`` let a run record exactly which samples it used.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnlm.errors import UnlearnError

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".jsonl", ".csv", ".txt")
ID_FIELDS = ("doc_id", "id")  # the first one present gives the sample ids (jsonl and csv)
_MAX_CSV_FIELD = 2**31 - 1  # csv.field_size_limit takes a C long (32 bits on Windows)
_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


@dataclass(frozen=True)
class Record:
    """One text as read from a file; ``prefix`` and ``suffix`` are set when the file split it."""

    id: str
    text: str
    prefix: str | None = None
    suffix: str | None = None


@dataclass(frozen=True)
class Sample:
    """A record split by the model's tokens: the prompt (prefix) and what follows it (suffix).

    ``text`` is the text of ``input_ids``: the record's text when every token was kept, else the
    decoded window.
    """

    id: str
    text: str
    prefix_ids: list[int]
    suffix_ids: list[int]

    @property
    def input_ids(self) -> list[int]:
        return self.prefix_ids + self.suffix_ids


# ---------------------------------------------------------------- reading files


def read_records(path: str | Path, *, role: str = "forget") -> list[Record]:
    """Read the samples of a ``.jsonl``, ``.csv`` or ``.txt`` file (see the module docstring).

    - ``.jsonl``: an object a line with ``text``, or ``prefix`` + ``suffix``; ``doc_id`` or ``id``.
    - ``.csv``: a header with a ``text`` column; ``doc_id`` or ``id`` gives the ids.
    - ``.txt``: one sample a line.

    Blank lines are skipped. Ids default to the 0-based line number (jsonl, txt) or data row
    number (csv). ``role`` ("forget", "pool", "retain", ...) names the file in error messages.
    """
    path = Path(path)
    where = f"{role} file {_show(str(path))}"
    raw = _read_bytes(path, where)
    parse = _PARSERS.get(path.suffix.lower())
    if parse is None:
        raise UnlearnError(
            f"{where} has an unknown extension {_show(path.suffix or '(none)')}; "
            f"use one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    records = parse(_decode_utf8(raw, where), where)
    if not records:
        raise UnlearnError(f"{where} holds no samples (only blank lines); add at least one text")
    _check_unique_ids(records, where)
    return records


def _read_bytes(path: Path, where: str) -> bytes:
    if path.is_dir():
        raise UnlearnError(f"{where} is a directory; give the path of a .jsonl, .csv or .txt file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UnlearnError(f"{where} not found; check the path") from None
    except PermissionError:
        raise UnlearnError(
            f"{where} can't be read (permission denied); make it readable (chmod u+r) or copy it"
        ) from None
    except (OSError, ValueError) as err:  # ValueError: a NUL character in the path
        raise UnlearnError(
            f"{where} can't be read ({_one_line(str(err))}); check the path"
        ) from None
    if not raw.strip():
        raise UnlearnError(f"{where} is empty; put at least one text in it")
    return raw


def _decode_utf8(raw: bytes, where: str) -> str:
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise UnlearnError(
            f"{where} contains a NUL byte at byte offset {nul} (line {_line_of(raw, nul)}); "
            "it looks binary or UTF-16: save it as UTF-8 text"
        )
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        raise UnlearnError(
            f"{where} is not UTF-8: byte 0x{raw[offset]:02x} at byte offset {offset} "
            f"(line {_line_of(raw, offset)}) can't be decoded; re-encode the file as "
            "UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _line_of(raw: bytes, offset: int) -> int:
    """The 1-based line number of a byte offset."""
    return raw.count(b"\n", 0, offset) + 1


def _lines(text: str) -> list[str]:
    """Split on \\n, \\r\\n or \\r (as Python's universal newlines and the csv module do)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _parse_txt(text: str, where: str) -> list[Record]:
    return [Record(str(number), line) for number, line in enumerate(_lines(text)) if line.strip()]


def _parse_jsonl(text: str, where: str) -> list[Record]:
    records = []
    for number, line in enumerate(_lines(text)):
        if not line.strip():
            continue
        at = f"{where} line {number + 1}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UnlearnError(
                f"{at}: bad JSON ({err.msg} at column {err.colno}); write one JSON object a line, "
                'e.g. {"text": "..."}'
            ) from None
        except (ValueError, RecursionError) as err:  # huge integers, deep nesting
            raise UnlearnError(
                f"{at}: bad JSON ({_one_line(str(err))[:200]}); fix the line"
            ) from None
        records.append(_record_from_object(obj, str(number), at))
    return records


def _record_from_object(obj: Any, default_id: str, at: str) -> Record:
    if not isinstance(obj, dict):
        raise UnlearnError(
            f'{at}: expected a JSON object like {{"text": "..."}}, got {_json_type(obj)}'
        )
    record_id = _id_value(next((obj[k] for k in ID_FIELDS if k in obj), None), default_id, at)
    if "prefix" in obj and "suffix" in obj:
        prefix, suffix = _string_field(obj, "prefix", at), _string_field(obj, "suffix", at)
        return Record(record_id, _checked_text(prefix + suffix, at), prefix, suffix)
    if "text" not in obj:
        raise UnlearnError(
            f'{at}: no "text" field (keys found: {_show_names(list(obj))}); '
            'give "text", or "prefix" and "suffix"'
        )
    return Record(record_id, _checked_text(_string_field(obj, "text", at), at))


def _string_field(obj: dict, name: str, at: str) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise UnlearnError(f'{at}: "{name}" is {_json_type(value)}, not a string; quote the text')
    _check_encodable(value, f'"{name}"', at)
    return value


def _id_value(value: Any, default: str, at: str) -> str:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UnlearnError(f"{at}: the id is {_json_type(value)}; use a string or an integer")
    text = str(value).strip()
    if not text:
        raise UnlearnError(f"{at}: the id is empty; give each sample an id or leave the field out")
    _check_encodable(text, "the id", at)
    return text


def _check_encodable(value: str, what: str, at: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UnlearnError(
            f"{at}: {what} holds a lone surrogate (an invalid \\u escape); fix or remove it"
        ) from None


def _checked_text(text: str, at: str) -> str:
    if not text.strip():
        raise UnlearnError(f"{at}: the text is empty or only whitespace; fill it in or remove it")
    return text


def _parse_csv(text: str, where: str) -> list[Record]:
    rows = _csv_rows(text, where)
    if not rows:
        raise UnlearnError(f"{where} holds no CSV rows; add a header with a text column and rows")
    header = [name.strip().lower() for name in rows[0][1]]
    if "text" not in header:
        raise UnlearnError(
            f'{where}: no "text" column (columns found: {_show_names(rows[0][1])}); '
            'name the column holding the samples "text"'
        )
    text_column = header.index("text")
    id_column = next((header.index(name) for name in ID_FIELDS if name in header), None)
    records = []
    for number, (line, row) in enumerate(rows[1:]):
        at = f"{where} line {line}"
        if text_column >= len(row):
            raise UnlearnError(
                f"{at}: {len(row)} fields, fewer than the {len(header)} of the header; "
                "check the quoting and the commas"
            )
        record_id = str(number) if id_column is None else _csv_id(row, id_column, at)
        records.append(Record(record_id, _checked_text(row[text_column], at)))
    return records


def _csv_id(row: list[str], column: int, at: str) -> str:
    cell = row[column] if column < len(row) else ""
    if not cell.strip():
        raise UnlearnError(f"{at}: the id cell is empty; give every row an id or drop the column")
    return cell.strip()


def _csv_rows(text: str, where: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV text, each with the line it starts on."""
    old_limit = csv.field_size_limit()
    csv.field_size_limit(min(max(old_limit, len(text) + 1), _MAX_CSV_FIELD))
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, start = [], 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as err:
        raise UnlearnError(
            f"{where} line {reader.line_num}: bad CSV ({_one_line(str(err))}); check the quoting"
        ) from None
    finally:
        csv.field_size_limit(old_limit)
    return rows


_PARSERS: dict[str, Callable[[str, str], list[Record]]] = {
    ".jsonl": _parse_jsonl,
    ".csv": _parse_csv,
    ".txt": _parse_txt,
}


def _check_unique_ids(records: list[Record], where: str) -> None:
    counts = Counter(record.id for record in records)
    repeated = next((key for key, count in counts.items() if count > 1), None)
    if repeated is not None:
        raise UnlearnError(
            f"{where}: the id {_show(repeated)} appears {counts[repeated]} times; "
            "give each sample its own id"
        )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _show(text: str) -> str:
    """The text as is when it prints on one line, else its Python repr (escapes \\n and such)."""
    return text if text.isprintable() else repr(text)


def _show_names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(name[:40]) for name in names[:limit])
    return (shown + ", ...") if len(names) > limit else (shown or "none")


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


# ---------------------------------------------------------------- splitting by tokens


def split_records(
    records: Iterable[Record],
    tokenizer: Any,
    prefix_tokens: int = 50,
    suffix_tokens: int | None = 50,
    *,
    role: str = "forget",
) -> list[Sample]:
    """Tokenize records (no special tokens) into prefix and suffix ids.

    A record with its own prefix and suffix keeps that split. A text of at least
    ``prefix_tokens + suffix_tokens`` tokens keeps its LAST that many tokens (the paper drops the
    earlier "preprefix"); with ``suffix_tokens=None`` the suffix is every token after the prefix.
    A shorter text is split in proportion, with one warning per call; a forget text must still be
    longer than the prefix (any text when ``suffix_tokens`` is None).
    """
    _check_token_counts(prefix_tokens, suffix_tokens)
    records = list(records)
    pieces = [text for record in records for text in _pieces(record)]
    encoded = iter(_encode(tokenizer, pieces))
    samples, proportional = [], 0
    for record in records:
        if _is_presplit(record):
            samples.append(_presplit_sample(record, next(encoded), next(encoded), role))
            continue
        sample, was_proportional = _window_sample(
            record, next(encoded), tokenizer, prefix_tokens, suffix_tokens, role
        )
        samples.append(sample)
        proportional += was_proportional
    if proportional:
        logger.warning(
            "%d of %d %s samples have fewer than %d tokens (prefix_tokens + suffix_tokens): "
            "split them in proportion %d:%d",
            proportional,
            len(records),
            role,
            prefix_tokens + suffix_tokens,
            prefix_tokens,
            suffix_tokens,
        )
    return samples


def split_after_opening(
    records: Iterable[Record], tokenizer: Any, opening_tokens: int = 8, *, role: str = "forget"
) -> list[Sample]:
    """Tokenize records into a short opening (the prefix) and everything after it (the suffix).

    Every token after the opening is a target, so nothing in a text escapes unlearning because it
    sits early. The opening is ``opening_tokens`` long, but at most a quarter of the text (at
    least one token). A record with its own prefix and suffix keeps that split."""
    if opening_tokens < 1:
        raise UnlearnError(f"opening_tokens must be 1 or more, got {opening_tokens}")
    records = list(records)
    pieces = [text for record in records for text in _pieces(record)]
    encoded = iter(_encode(tokenizer, pieces))
    samples = []
    for record in records:
        if _is_presplit(record):
            samples.append(_presplit_sample(record, next(encoded), next(encoded), role))
            continue
        ids = next(encoded)
        if len(ids) < 2:
            raise UnlearnError(
                f"{role} sample {_show(record.id)} has {len(ids)} token(s); a text needs at least "
                "2 (an opening and one token after it): remove the sample"
            )
        cut = min(opening_tokens, max(len(ids) // 4, 1))
        samples.append(Sample(record.id, record.text, ids[:cut], ids[cut:]))
    return samples


def _check_token_counts(prefix_tokens: int, suffix_tokens: int | None) -> None:
    if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 1:
        raise UnlearnError(f"prefix_tokens must be an integer >= 1, got {prefix_tokens!r}")
    if suffix_tokens is not None and (
        isinstance(suffix_tokens, bool) or not isinstance(suffix_tokens, int) or suffix_tokens < 1
    ):
        raise UnlearnError(
            f"suffix_tokens must be an integer >= 1 or None (all the rest), got {suffix_tokens!r}"
        )


def _is_presplit(record: Record) -> bool:
    return record.prefix is not None and record.suffix is not None


def _pieces(record: Record) -> list[str]:
    return [record.prefix, record.suffix] if _is_presplit(record) else [record.text]


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return [list(ids) for ids in encoded["input_ids"]]


def _presplit_sample(
    record: Record, prefix_ids: list[int], suffix_ids: list[int], role: str
) -> Sample:
    for part, ids in (("prefix", prefix_ids), ("suffix", suffix_ids)):
        if not ids:
            raise UnlearnError(
                f"{role} sample {_show(record.id)} has an empty {part} (0 tokens); "
                'give a non-empty prefix and suffix, or a single "text" field'
            )
    return Sample(record.id, record.text, prefix_ids, suffix_ids)


def _window_sample(
    record: Record,
    ids: list[int],
    tokenizer: Any,
    prefix_tokens: int,
    suffix_tokens: int | None,
    role: str,
) -> tuple[Sample, bool]:
    """Split one tokenized text; the flag says whether it was split in proportion."""
    n = len(ids)
    # a forget text no longer than the prompt is a mistake; a never-seen or pool text that short
    # is still a usable yardstick, split in proportion like any text under prefix + suffix
    if n < 2 or (n <= prefix_tokens and (suffix_tokens is None or role == "forget")):
        raise UnlearnError(
            f"{role} sample {_show(record.id)} has {n} tokens, too few to split into a prefix "
            f"(prefix_tokens={prefix_tokens}) and a non-empty suffix; lower --prefix-tokens, "
            "set --suffix-tokens, or remove the sample"
        )
    proportional = suffix_tokens is not None and n < prefix_tokens + suffix_tokens
    window, cut = ids, prefix_tokens
    if proportional:
        cut = min(max(round(n * prefix_tokens / (prefix_tokens + suffix_tokens)), 1), n - 1)
    elif suffix_tokens is not None:
        window = ids[n - prefix_tokens - suffix_tokens :]
    text = record.text if len(window) == n else tokenizer.decode(window)
    return Sample(record.id, text, window[:cut], window[cut:]), proportional


# ---------------------------------------------------------------- fingerprints


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as err:
        raise UnlearnError(f"can't hash {_show(str(path))} ({_one_line(str(err))})") from None
    return digest.hexdigest()


def texts_sha256(texts: list[str]) -> str:
    """The SHA-256 of texts in order: per text, its UTF-8 length (8 bytes big-endian), its bytes."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def distinct_positions(tokens: list[int], partner: list[int]) -> list[bool]:
    """Per position t of ``tokens``: whether its bigram (x_{t-1}, x_t) is absent from
    ``partner`` (position 0, which has no bigram, counts as not distinct). With the partner a
    similar text (a look-alike record, a neighbouring document), the distinct positions are what
    tells the text apart; the shared ones are wording the two have in common (a form's field
    names, common phrases)."""
    shared = set(zip(partner, partner[1:]))
    return [False] + [(a, b) not in shared for a, b in zip(tokens, tokens[1:])]
