"""Every protocol's rewards equal offline `score`'s on the same rows (float32, |delta| <= 1e-5), and
offline `score` equals transformers' (`reference.json`, 1e-4): sglang /classify, vLLM and lmdeploy
/pooling, OpenRLHF /get_reward on the official client's texts (`encoding.client_text`), native /score
on the rows themselves; message lists, the pretrain wrapper and rows the client's rules truncate."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from polar_jax.data import encoding

ATOL = 1e-5
MAX_LENGTH = 512  # conftest's Server: --max-length
LONG = " ".join(f"sentence {i} of a long text about the sea and its tides." for i in range(120))  # ~1800 tokens


def _extra_rows() -> list[dict]:
    """A pretrain-wrapper row and rows the client truncates: prompt, reference, output, all three."""
    messages = [{"role": "system", "content": "Be thorough."}, {"role": "user", "content": LONG}]
    return [
        {"prompt": "Name a colour.", "reference": "Blue.", "output": "Red.", "wrapper": "pretrain"},
        {"prompt": LONG, "reference": "The tide.", "output": "The moon pulls the sea."},
        {"prompt": "Describe the sea.", "reference": LONG, "output": "It is wet."},
        {"prompt": "Describe the sea.", "reference": "Salty water.", "output": LONG},
        {
            "prompt": messages,
            "reference": [{"role": "assistant", "content": LONG}],
            "output": [{"role": "assistant", "content": "Short. " + LONG}],
            "wrapper": "pretrain",
        },
    ]


# the parts `encoding.build_text` reports cut for each of `_extra_rows`
EXTRA_TRUNCATED = [(), ("prompt",), ("reference",), ("candidate",), ("prompt", "reference", "candidate")]


@pytest.fixture(scope="module")
def rows(rm_dir) -> list[dict]:
    """The fixture's rows (one of message lists) and `_extra_rows`."""
    fixture_rows = [json.loads(line) for line in (rm_dir[0] / "rows.jsonl").read_text().splitlines()]
    assert any(isinstance(r["prompt"], list) for r in fixture_rows)
    return fixture_rows + _extra_rows()


@pytest.fixture(scope="module")
def texts(rows, rm_tokenizer, serve_encoding) -> list[str]:
    """The official client's text of each row (`_encode`: the reward token's text last)."""
    return [
        encoding.client_text(rm_tokenizer, r["prompt"], r["reference"], r["output"], serve_encoding, r.get("wrapper"))
        for r in rows
    ]


@pytest.fixture(scope="module")
def expected(rows, offline_rewards) -> np.ndarray:
    """Offline `score`'s rewards of `rows`."""
    return offline_rewards(rows)


def test_offline_score_equals_transformers(rm_dir, rows, texts, expected):
    """Offline `score` reproduces transformers' scores of the client's texts (the fixture's reference)."""
    reference = rm_dir[1]["rows"]
    assert texts[: len(reference)] == [r["text"] for r in reference]
    np.testing.assert_allclose(expected[: len(reference)], [r["score"] for r in reference], atol=1e-4, rtol=0)


def test_long_rows_are_truncated_to_the_budget(rows, rm_tokenizer, rm_dir, serve_encoding):
    """The extra rows are cut by the client's rules (the parts `build_text` reports) and fit --max-length."""
    extra = rows[-len(EXTRA_TRUNCATED) :]
    reward_id = rm_dir[1]["reward_token_id"]
    for row, parts in zip(extra, EXTRA_TRUNCATED):
        _, truncated = encoding.build_text(
            rm_tokenizer, row["prompt"], row["reference"], row["output"], serve_encoding, row.get("wrapper")
        )
        assert truncated == parts
        ids = encoding.encode(
            rm_tokenizer, row["prompt"], row["reference"], row["output"], serve_encoding, reward_id, row.get("wrapper")
        ).ids
        assert len(ids) <= MAX_LENGTH and ids[-1] == reward_id
        if parts:  # a cut part still fills its budget: the cut rows reach the wide buckets
            assert len(ids) > serve_encoding.max_response_length
        if "prompt" in parts:  # the prompt (twice in the text) takes what the responses leave
            assert len(ids) >= MAX_LENGTH - 16
    # the pretrain row: no "\n" between prompt and response
    assert encoding.build_text(rm_tokenizer, "Name a colour.", "Blue.", "Red.", serve_encoding, "pretrain")[0] == (
        "Name a colour.Blue.<|reward|>Name a colour.Red."
    )


def _post(url: str, path: str, body: dict) -> httpx.Response:
    response = httpx.post(url + path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response


def read_rewards(url: str, protocol: str, texts: list[str] | str, rows: list[dict] | None = None, model=None):
    """POST to one protocol's route and read the rewards where its client reads them."""
    if protocol == "classify":
        items = _post(url, "/classify", {"model": model, "text": texts}).json()
        assert [item["index"] for item in items] == list(range(len(items)))
        return np.asarray([item["embedding"][0] for item in items], np.float32)
    if protocol in ("vllm", "lmdeploy"):
        body = _post(url, "/pooling", {"input": texts}).json()
        assert body["object"] == "list" and [item["index"] for item in body["data"]] == list(range(len(body["data"])))
        if protocol == "vllm":
            return np.asarray([item["data"][-1][0] for item in body["data"]], np.float32)
        assert all(isinstance(item["data"], float) for item in body["data"])
        return np.asarray([item["data"] for item in body["data"]], np.float32)
    if protocol == "get_reward":
        body = _post(url, "/get_reward", {"query": texts}).json()
        assert body["scores"] == body["rewards"]
        return np.asarray(body["rewards"], np.float32)
    assert protocol == "score"
    return np.asarray(_post(url, "/score", {"rows": rows}).json()["rewards"], np.float32)


@pytest.mark.parametrize("protocol", ["classify", "vllm", "get_reward", "score"])
def test_protocol_equals_offline_score(shared_server, rm_dir, protocol, rows, texts, expected):
    """Each route's rewards (where its client reads them) are offline `score`'s, row for row."""
    got = read_rewards(shared_server.url, protocol, texts, rows, model=rm_dir[0].name)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("protocol", ["classify", "vllm", "get_reward"])
def test_a_lone_string_is_one_text(shared_server, protocol, texts, expected):
    """`"text": "..."` (not a list) is scored as a list of one, as the servers themselves accept it."""
    got = read_rewards(shared_server.url, protocol, texts[3])
    assert got.shape == (1,)
    np.testing.assert_allclose(got, expected[3:4], atol=ATOL, rtol=0)


def test_models_lists_the_model(shared_server, rm_dir):
    """/v1/models: the model directory's name and the server's max length."""
    body = httpx.get(shared_server.url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in body["data"]] == [rm_dir[0].name]
    assert body["data"][0]["max_model_len"] == MAX_LENGTH


def test_lmdeploy_pooling_equals_offline_score(start_server, rm_dir, texts, expected):
    """`--api lmdeploy`: /pooling answers a float per item (`data`), offline `score`'s reward; a lone
    string too. The other routes answer as with --api vllm."""
    server = start_server(rm_dir[0], "--api", "lmdeploy")
    np.testing.assert_allclose(read_rewards(server.url, "lmdeploy", texts), expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(read_rewards(server.url, "lmdeploy", texts[0]), expected[:1], atol=ATOL, rtol=0)
    np.testing.assert_allclose(read_rewards(server.url, "classify", texts), expected, atol=ATOL, rtol=0)
