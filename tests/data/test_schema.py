"""JSONL row validation: every bad row names FILE:LINE, field and reason (strict) or is counted (skip)."""

import json

import pytest

from polar_jax.data import schema

GOOD = {"prompt": "p", "reference": "r", "chosen": "c", "rejected": "d"}


def _with(**changes):
    row = dict(GOOD)
    for key, value in changes.items():
        if value is _DELETE:
            row.pop(key)
        else:
            row[key] = value
    return json.dumps(row).encode()


_DELETE = object()

# (bad line as bytes, reason code, field named in the error or None)
BAD_LINES = {
    "bad_json": (b'{"prompt": "p", ', "bad_json", None),
    "not_object": (b'["p", "r", "c", "d"]', "not_object", None),
    "not_object_string": (b'"just a string"', "not_object", None),
    "missing_field": (_with(rejected=_DELETE), "missing_field", "rejected"),
    "unknown_field": (_with(score=1.0), "unknown_field", "score"),
    "wrong_type_number": (_with(chosen=3), "wrong_type", "chosen"),
    "wrong_type_null": (_with(reference=None), "wrong_type", "reference"),
    "wrong_type_meta": (_with(meta=["policy"]), "wrong_type", "meta"),
    "empty_string": (_with(prompt=""), "empty", "prompt"),
    "empty_messages": (_with(chosen=[]), "empty", "chosen"),
    "empty_content": (_with(rejected=[{"role": "user", "content": ""}]), "empty", "rejected[0].content"),
    "message_not_object": (_with(prompt=["hi"]), "wrong_type", "prompt[0]"),
    "message_missing_content": (_with(prompt=[{"role": "user"}]), "missing_field", "prompt[0].content"),
    "message_missing_role": (
        _with(chosen=[{"role": "a", "content": "x"}, {"content": "y"}]),
        "missing_field",
        "chosen[1].role",
    ),
    "message_unknown_key": (
        _with(prompt=[{"role": "user", "content": "x", "tool_calls": []}]),
        "unknown_field",
        "prompt[0].tool_calls",
    ),
    "message_content_not_string": (
        _with(prompt=[{"role": "user", "content": ["x"]}]),
        "wrong_type",
        "prompt[0].content",
    ),
    "bad_utf8": (b'{"prompt": "caf\xe9", "reference": "r", "chosen": "c", "rejected": "d"}', "bad_utf8", None),
    "bad_wrapper": (_with(wrapper="chat"), "bad_value", "wrapper"),
    "wrapper_not_string": (_with(wrapper=1), "bad_value", "wrapper"),
}


def _write(tmp_path, lines, name="rows.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_strict_mode_raises_file_line_field_and_reason(tmp_path, case):
    bad, reason, field = BAD_LINES[case]
    path = _write(tmp_path, [json.dumps(GOOD).encode(), bad, json.dumps(GOOD).encode()])
    rows = schema.read_jsonl(path, "triplet")
    assert next(rows).line == 1  # the good row before it is still yielded
    with pytest.raises(schema.DataError) as info:
        next(rows)
    err = info.value
    assert (err.source, err.reason, err.field) == (f"{path}:2", reason, field)
    message = str(err)
    where = f"{path}:2: field {field!r}: " if field else f"{path}:2: "
    assert message.startswith(where), message
    assert f"[{reason}]" in message and "--skip-invalid" in message


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_skip_mode_counts_the_row_and_goes_on(tmp_path, case):
    bad, reason, field = BAD_LINES[case]
    path = _write(tmp_path, [json.dumps(GOOD).encode(), bad, bad, json.dumps(dict(GOOD, prompt="q")).encode()])
    report = schema.SkipReport()
    rows = list(schema.read_jsonl(path, "triplet", skip_invalid=True, report=report))
    assert [(r.line, r.data["prompt"]) for r in rows] == [(1, "p"), (4, "q")]
    assert report.counts == {reason: 2}
    assert report.invalid == 2
    prefix = f"{path}:2: field {field!r}: " if field else f"{path}:2: "
    assert report.examples[reason][0].startswith(prefix)
    assert report.examples[reason][1].startswith(f"{path}:3")


def test_valid_rows_strings_messages_meta_and_sources(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi", "name": "ann"}]
    rows_in = [
        dict(GOOD, meta={"policy_a": "m1", "seed": 3}),
        {"prompt": messages, "reference": "r", "chosen": [{"role": "assistant", "content": "ok"}], "rejected": "no"},
        dict(GOOD, prompt="  \u4f60\u597d \U0001f600 "),  # whitespace-only content is still content
    ]
    path = _write(tmp_path, [json.dumps(r, ensure_ascii=False).encode() for r in rows_in])
    rows = list(schema.read_jsonl(path, "triplet"))
    assert [r.data for r in rows] == rows_in
    assert [r.line for r in rows] == [1, 2, 3]
    assert [r.source for r in rows] == [f"{path}:1", f"{path}:2", f"{path}:3"]


def test_blank_lines_are_counted_never_errors(tmp_path):
    path = _write(tmp_path, [b"", json.dumps(GOOD).encode(), b"   \r", json.dumps(GOOD).encode(), b""])
    for skip in (False, True):
        report = schema.SkipReport()
        rows = list(schema.read_jsonl(path, "triplet", skip_invalid=skip, report=report))
        assert [r.line for r in rows] == [2, 4]
        assert report.counts == {"blank_line": 3}
        assert report.invalid == 0
        assert report.examples["blank_line"] == [f"{path}:1", f"{path}:3", f"{path}:5"]


def test_utf8_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n" + json.dumps(GOOD).encode() + b"\r\n")
    assert [r.data for r in schema.read_jsonl(path, "triplet")] == [GOOD, GOOD]


def test_score_rows_and_kind_specific_fields(tmp_path):
    score = {"prompt": "p", "reference": "r", "output": "o", "meta": {}}
    path = _write(tmp_path, [json.dumps(score).encode(), json.dumps(GOOD).encode()])
    rows = schema.read_jsonl(path, "score")
    assert next(rows).data == score
    with pytest.raises(schema.DataError, match=rf"{path}:2: field 'chosen': .*\[unknown_field\]"):
        next(rows)
    with pytest.raises(
        schema.DataError, match=rf"{path}:1: field 'output': .*looks like a score row \[unknown_field\]"
    ):
        list(schema.read_jsonl(path, "triplet"))
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"prompt": "p", "reference": "r"}) + "\n")
    with pytest.raises(
        schema.DataError,
        match=rf"{missing}:1: field 'output': missing \(a score row needs prompt, reference, output\) \[missing_field\]",
    ):
        list(schema.read_jsonl(missing, "score"))
    with pytest.raises(ValueError, match="unknown row kind 'pairs'"):
        list(schema.read_jsonl(path, "pairs"))


def test_skip_report_keeps_a_few_examples_per_reason_and_serialises(tmp_path):
    lines = [b"{bad"] * 7 + [b"[]"] + [json.dumps(GOOD).encode()]
    path = _write(tmp_path, lines)
    report = schema.SkipReport(max_examples=3)
    assert len(list(schema.read_jsonl(path, "triplet", skip_invalid=True, report=report))) == 1
    assert report.to_dict() == {
        "bad_json": {
            "count": 7,
            "examples": [
                f"{path}:{i}: invalid JSON: Expecting property name enclosed in double quotes at column 2"
                for i in (1, 2, 3)
            ],
        },
        "not_object": {"count": 1, "examples": [f"{path}:8: expected a JSON object, got array"]},
    }
    assert "bad_json: 7" in report.summary()


def test_validate_row_for_rows_from_elsewhere():
    assert schema.validate_row(GOOD, "triplet") is GOOD
    with pytest.raises(schema.DataError, match=r"^request 3: field 'output': empty string \[empty\]"):
        schema.validate_row({"prompt": "p", "reference": "r", "output": ""}, "score", source="request 3")


def test_wrapper_is_allowed_on_triplet_and_score_rows_only():
    assert schema.validate_row({**GOOD, "wrapper": "pretrain"}, "triplet")["wrapper"] == "pretrain"
    assert (
        schema.validate_row({"prompt": "p", "reference": "r", "output": "o", "wrapper": "sft"}, "score")["wrapper"]
        == "sft"
    )
    with pytest.raises(schema.DataError, match="unknown field for a rft row"):
        schema.validate_row({"prompt": "p", "reference": "r", "wrapper": "sft"}, "rft")
