"""Validation of POLAR JSONL rows: every bad row is named by FILE:LINE, field and reason.

Three row kinds share one shape of text field:

    triplet  {"prompt", "reference", "chosen", "rejected"}  the official POLAR training format
    score    {"prompt", "reference", "output"}              the official client's format
    rft      {"prompt", "reference"}                        RFT prompts with their references

Each may carry `meta`, a JSON object (policy names, seeds, anything); triplet and score rows
may carry `wrapper`, "sft" or "pretrain" (as xtuner and the official client read it), which
overrides the encoding's default for that row. A text field is a
non-empty string, or a non-empty list of messages `{"role": str, "content": str}` (optionally
`"name": str`; any other key is an error, since a misspelt key would otherwise be dropped
silently). A message's role and content must be non-empty.

Files are read as bytes and decoded line by line, so invalid UTF-8 is reported at its line.
A line longer than `max_row_bytes` (16 MiB by default) is
refused as "too_long" before it is parsed, reading at most that much of it at a time.
Every rejection has a stable reason code (`REASONS`). Blank lines are not rows: they are
counted under "blank_line" in a `SkipReport` and never raise, in either mode.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

from polar_jax.errors import UserError
from polar_jax.io import storage

TEXT_FIELDS = {
    "triplet": ("prompt", "reference", "chosen", "rejected"),
    "score": ("prompt", "reference", "output"),
    "rft": ("prompt", "reference"),
}
OPTIONAL_FIELDS = {"triplet": ("meta", "wrapper"), "score": ("meta", "wrapper"), "rft": ("meta",)}
WRAPPERS = ("sft", "pretrain")  # = data.encoding.WRAPPERS (kept here: schema imports nothing of ours)
MESSAGE_KEYS = ("role", "content")
MESSAGE_OPTIONAL_KEYS = ("name",)

# reason code -> what it means (the codes are stable: stats.json and tests use them)
REASONS = {
    "bad_utf8": "the line is not valid UTF-8",
    "bad_json": "the line is not valid JSON",
    "not_object": "the row is not a JSON object",
    "missing_field": "a required field is missing",
    "unknown_field": "a field the schema does not know",
    "wrong_type": "a field has the wrong type",
    "bad_value": "a field's value is not one of those allowed",
    "empty": "an empty string, message list or message content",
    "blank_line": "a blank line (counted, never an error)",
    "too_long": "the line is longer than the row-size limit (--max-row-bytes); it is not read whole",
}

MAX_ROW_BYTES = 16 * 2**20  # a longer line is refused (or skipped) before it is read whole, decoded or parsed
_SKIP_CHUNK = 2**20  # an over-long line's rest is read and dropped in pieces of this size

SKIP_HINT = "fix the row, or use --skip-invalid (skip_invalid=True) to skip such rows; they are counted and reported"


class DataError(UserError, ValueError):
    """A bad input row: the message reads `FILE:LINE: field 'X': reason` and says what to do."""

    def __init__(self, source: str, reason: str, detail: str, field: str | None = None, hint: str = SKIP_HINT):
        self.source, self.reason, self.detail, self.field = source, reason, detail, field
        where = f"{source}: field {field!r}" if field else source
        super().__init__(f"{where}: {detail} [{reason}]; {hint}")

    @property
    def location(self) -> str:
        """`FILE:LINE: field 'X'` (the field only when the error has one)."""
        return f"{self.source}: field {self.field!r}" if self.field else self.source


class Row(NamedTuple):
    """One valid row: its 1-based line number, the validated dict and "FILE:LINE"."""

    line: int
    data: dict
    source: str


@dataclasses.dataclass
class SkipReport:
    """Counts of skipped lines per reason code, with the first few "FILE:LINE: ..." examples each."""

    max_examples: int = 5
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def add(self, reason: str, example: str) -> None:
        """Count one skipped line under `reason`, keeping it as an example while there is room."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            kept.append(example)

    @property
    def invalid(self) -> int:
        """Rows skipped because they were invalid (blank lines excluded)."""
        return sum(n for reason, n in self.counts.items() if reason != "blank_line")

    def to_dict(self) -> dict:
        """JSON-ready: {reason: {"count": n, "examples": [...]}} in a stable (sorted) order."""
        return {r: {"count": self.counts[r], "examples": list(self.examples.get(r, []))} for r in sorted(self.counts)}

    def summary(self) -> str:
        """Human-readable lines, one per reason, with the first example."""
        lines = []
        for reason, entry in self.to_dict().items():
            first = f" (first: {entry['examples'][0]})" if entry["examples"] else ""
            lines.append(f"  {reason}: {entry['count']}{first}")
        return "\n".join(lines)


class _Invalid(Exception):
    """Internal: one reason a value is invalid (turned into a DataError with the location)."""

    def __init__(self, reason: str, detail: str, field: str | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.field = reason, detail, field


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _check_text(field: str, value: Any) -> None:
    if isinstance(value, str):
        if not value:
            raise _Invalid("empty", "empty string", field)
        return
    if not isinstance(value, list):
        raise _Invalid("wrong_type", f"expected a string or a list of messages, got {_type_name(value)}", field)
    if not value:
        raise _Invalid("empty", "empty message list", field)
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise _Invalid(
                "wrong_type", f"expected a message object {{role, content}}, got {_type_name(message)}", where
            )
        unknown = sorted(set(message) - set(MESSAGE_KEYS) - set(MESSAGE_OPTIONAL_KEYS))
        if unknown:
            raise _Invalid(
                "unknown_field",
                f"unknown message key {unknown[0]!r}; a message has only role, content and (optional) name",
                f"{where}.{unknown[0]}",
            )
        for key in MESSAGE_KEYS:
            if key not in message:
                raise _Invalid("missing_field", f"message has no {key!r}", f"{where}.{key}")
        for key in (*MESSAGE_KEYS, *MESSAGE_OPTIONAL_KEYS):
            if key in message and not isinstance(message[key], str):
                raise _Invalid("wrong_type", f"expected a string, got {_type_name(message[key])}", f"{where}.{key}")
            if key in message and not message[key]:
                raise _Invalid("empty", f"empty message {key}", f"{where}.{key}")


def validate_row(obj: Any, kind: str, source: str = "<row>") -> dict:
    """Check one parsed JSON value against the `kind` schema; returns it or raises DataError."""
    if kind not in TEXT_FIELDS:
        raise ValueError(f"unknown row kind {kind!r}; choose one of {', '.join(TEXT_FIELDS)}")
    try:
        return _validate(obj, kind)
    except _Invalid as e:
        raise DataError(source, e.reason, e.detail, e.field) from None


def _validate(obj: Any, kind: str) -> dict:
    if not isinstance(obj, dict):
        raise _Invalid("not_object", f"expected a JSON object, got {_type_name(obj)}")
    required, optional = TEXT_FIELDS[kind], OPTIONAL_FIELDS[kind]
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        looks_like = [
            k for k, fields in TEXT_FIELDS.items() if k != kind and set(obj) - set(OPTIONAL_FIELDS[k]) == set(fields)
        ]
        hint = f"; this looks like a {looks_like[0]} row" if looks_like else ""
        raise _Invalid(
            "unknown_field",
            f"unknown field for a {kind} row (fields: {', '.join(required + optional)}){hint}",
            unknown[0],
        )
    for field in required:
        if field not in obj:
            raise _Invalid("missing_field", f"missing (a {kind} row needs {', '.join(required)})", field)
    for field in required:
        _check_text(field, obj[field])
    if "meta" in obj and not isinstance(obj["meta"], dict):
        raise _Invalid("wrong_type", f"expected a JSON object, got {_type_name(obj['meta'])}", "meta")
    if "wrapper" in obj and obj["wrapper"] not in WRAPPERS:
        raise _Invalid("bad_value", f'expected "sft" or "pretrain", got {json.dumps(obj["wrapper"])}', "wrapper")
    return obj


def parse_line(raw: bytes, kind: str, source: str, first_line: bool = False) -> dict | None:
    """Decode and validate one raw line; None for a blank line, DataError for a bad one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            source, "bad_utf8", f"invalid UTF-8 at byte {e.start} ({raw[e.start : e.start + 4]!r})"
        ) from None
    if first_line and text.startswith("\ufeff"):  # a BOM some editors write
        text = text[1:]
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(source, "bad_json", f"invalid JSON: {e.msg} at column {e.colno}") from None
    return validate_row(obj, kind, source)


def _lines(f, max_row_bytes: int) -> Iterator[tuple[bytes | None, int]]:
    """(line, 0) per line of binary file `f`; a line over `max_row_bytes` (its newline not counted)
    is (None, its length), read and dropped in chunks: never held whole."""
    while raw := f.readline(max_row_bytes + 1):
        if raw.endswith(b"\n") or len(raw) <= max_row_bytes:
            yield raw, 0
            continue
        size = len(raw)
        del raw
        while (chunk := f.readline(_SKIP_CHUNK)) and not chunk.endswith(b"\n"):
            size += len(chunk)
        yield None, size + len(chunk.rstrip(b"\r\n"))


def read_jsonl(
    path: str | os.PathLike,
    kind: str,
    skip_invalid: bool = False,
    report: SkipReport | None = None,
    max_row_bytes: int = MAX_ROW_BYTES,
) -> Iterator[Row]:
    """Yield the valid rows of a JSONL file of `kind` ("triplet" | "score" | "rft") in file order.

    Strict (default): raise DataError at the first bad row. `skip_invalid`: count each bad row in
    `report` (by reason, with examples) and go on. Blank lines are counted, never raised. A line
    over `max_row_bytes` is a "too_long" row, found without reading it whole (bounded memory).
    """
    if kind not in TEXT_FIELDS:
        raise ValueError(f"unknown row kind {kind!r}; choose one of {', '.join(TEXT_FIELDS)}")
    if isinstance(max_row_bytes, bool) or not isinstance(max_row_bytes, int) or max_row_bytes < 1:
        raise UserError(f"max_row_bytes (--max-row-bytes) must be a positive integer, got {max_row_bytes!r}")
    name = os.fspath(path)
    with storage.path(path).open(
        "rb"
    ) as f:  # bytes (a run's gs:// workdir too): decode per line to report bad UTF-8 at its line
        for line_no, (raw, size) in enumerate(_lines(f, max_row_bytes), start=1):
            source = f"{name}:{line_no}"
            try:
                if raw is None:
                    raise DataError(
                        source,
                        "too_long",
                        f"the line is {size} bytes, over the limit of {max_row_bytes} bytes",
                        hint=f"{SKIP_HINT}; or raise the limit with --max-row-bytes",
                    )
                data = parse_line(raw, kind, source, first_line=line_no == 1)
            except DataError as e:
                if not skip_invalid:
                    raise
                if report is not None:
                    report.add(e.reason, f"{e.location}: {e.detail}")
                continue
            if data is None:
                if report is not None:
                    report.add("blank_line", source)
                continue
            yield Row(line_no, data, source)
