"""Bad input and load against the real server: every bad request gets its status code and a message
naming what was wrong, and the server answers the next good request correctly.

Good requests carry the `score` fixture's texts (or rows) and must get transformers' scores
(reference.json) back, in their own order."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest

TOKEN = "[UNUSED_TOKEN_130]"  # the reward token's text, which client-built texts end in
ATOL = 1e-5
TEXT_ROUTES = {"/classify": "text", "/pooling": "input", "/get_reward": "query"}


def reference(rm_dir) -> tuple[list[str], list[dict], list[float]]:
    """(texts, rows, scores) of the fixture: row i of rows.jsonl is text i of reference.json."""
    model_dir, ref = rm_dir
    rows = [json.loads(line) for line in (model_dir / "rows.jsonl").read_text().splitlines() if line.strip()]
    return [r["text"] for r in ref["rows"]], rows, [r["score"] for r in ref["rows"]]


def scores_of(route: str, body) -> list[float]:
    """The scores in a 200 response of `route` (vLLM's /pooling shape)."""
    if route == "/classify":
        return [item["embedding"][0] for item in body]
    if route == "/pooling":
        return [item["data"][-1][0] for item in body["data"]]
    return body["rewards"]


def post(server, route: str, timeout: float = 60.0, **kwargs) -> httpx.Response:
    """POST to the server."""
    return httpx.post(server.url + route, timeout=timeout, **kwargs)


def assert_good(server, rm_dir, route: str = "/classify", order=(4, 0, 3, 1, 2), **kwargs) -> None:
    """A good request to `route` gets 200 and the reference scores, in its own order."""
    texts, rows, want = reference(rm_dir)
    items = [rows[i] for i in order] if route == "/score" else [texts[i] for i in order]
    response = post(server, route, json={"rows" if route == "/score" else TEXT_ROUTES[route]: items}, **kwargs)
    assert response.status_code == 200, response.text
    assert scores_of(route, response.json()) == pytest.approx([want[i] for i in order], abs=ATOL)


def assert_error(response: httpx.Response, status: int, *parts: str) -> str:
    """`response` has `status`, the vLLM error body, and a message containing every one of `parts`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["object"] == "error" and body["code"] == status
    for part in parts:
        assert part in body["message"], body["message"]
    return body["message"]


def long_text(words: int = 700) -> str:
    """A client-built text of more than 512 tokens."""
    return "word " * words + TOKEN


def text_cases(field: str, texts: list[str]) -> dict[str, tuple[object, tuple[str, ...]]]:
    """Bad bodies of a text route: name -> (JSON body or raw bytes, what the 400 message names)."""
    return {
        "malformed_json": (b'{"%s": ["abc' % field.encode(), ("malformed JSON",)),
        "not_an_object": ([texts[0]], ("the body",)),
        "missing_field": ({"model": "m"}, (f"field {field}", "required")),
        "ill_typed_field": ({field: 5}, (f"field {field}", "list")),
        "ill_typed_item": ({field: [*texts[:3], 7]}, (f"field {field}[3]", "string")),
        "no_reward_token": ({field: [*texts[:2], "no reward token here"]}, (f"{field}[2]", TOKEN)),
        "too_long": ({field: [texts[0], long_text()]}, (f"{field}[1] has", "tokens", "512")),
    }


def row_cases(rows: list[dict]) -> dict[str, tuple[object, tuple[str, ...]]]:
    """Bad bodies of /score, as `text_cases`."""
    no_output = {k: v for k, v in rows[1].items() if k != "output"}
    return {
        "malformed_json": (b'{"rows": [{"prompt": ', ("malformed JSON",)),
        "not_an_object": (rows[:1], ("the body",)),
        "missing_field": ({}, ("field rows", "required")),
        "ill_typed_field": ({"rows": "abc"}, ("field rows", "list")),
        "ill_typed_item": ({"rows": [*rows[:3], 7]}, ("rows[3]", "object")),
        "item_missing_field": ({"rows": [rows[0], no_output]}, ("rows[1]", "'output'", "missing")),
        "item_ill_typed_field": ({"rows": [*rows[:2], {**rows[2], "reference": 5}]}, ("rows[2]", "'reference'")),
        "item_bad_wrapper": ({"rows": [{**rows[0], "wrapper": "chat"}]}, ("rows[0]", "'wrapper'")),
    }


CASES = [(route, name) for route, field in TEXT_ROUTES.items() for name in text_cases(field, [""] * 3)]
CASES += [("/score", name) for name in row_cases([{"output": ""}] * 3)]


@pytest.mark.parametrize(("route", "case"), CASES)
def test_bad_request_gets_400_naming_the_item(shared_server, rm_dir, route, case):
    texts, rows, _ = reference(rm_dir)
    cases = row_cases(rows) if route == "/score" else text_cases(TEXT_ROUTES[route], texts)
    body, parts = cases[case]
    if isinstance(body, bytes):
        response = post(shared_server, route, content=body, headers={"content-type": "application/json"})
    else:
        response = post(shared_server, route, json=body)
    assert_error(response, 400, *parts)
    assert_good(shared_server, rm_dir, route)


def test_too_long_message_gives_the_length(shared_server, rm_dir):
    texts, _, _ = reference(rm_dir)
    response = post(shared_server, "/classify", json={"text": [texts[0], texts[1], long_text(700)]})
    message = assert_error(response, 400, "text[2] has")
    tokens = int(message.split(" has ")[1].split()[0])
    assert 700 < tokens < 1000  # 700 words and the reward token, with the tokenizer's BOS if any
    assert_good(shared_server, rm_dir, "/classify")


def test_body_over_the_limit_gets_413(start_server, rm_dir):
    server = start_server(rm_dir[0], "--max-body-bytes", "2048")
    texts, _, _ = reference(rm_dir)
    big = json.dumps({"text": [texts[0]] * 30}).encode()
    assert len(big) > 2048
    assert_error(post(server, "/classify", content=big), 413, f"{len(big)} bytes", "2048")
    assert_good(server, rm_dir)

    def chunks(data: bytes, size: int = 256):
        for i in range(0, len(data), size):
            yield data[i : i + size]

    headers = {"content-type": "application/json"}
    response = post(server, "/classify", content=chunks(big), headers=headers)
    assert "content-length" not in response.request.headers  # sent chunked: the server counts as it reads
    assert_error(response, 413, "exceeds the limit of 2048 bytes")
    assert_good(server, rm_dir)
    small = json.dumps({"text": texts[:2]}).encode()
    response = post(server, "/classify", content=chunks(small, 64), headers=headers)
    assert response.status_code == 200 and scores_of("/classify", response.json()) == pytest.approx(
        reference(rm_dir)[2][:2], abs=ATOL
    )


def test_full_queue_gets_503_with_retry_after(start_server, rm_dir):
    server = start_server(rm_dir[0], "--max-queue", "4")
    texts, _, want = reference(rm_dir)
    orders = [[(i + k) % 5 for k in range(4)] for i in range(5)]  # 4 rows each: a waiting request fills the queue

    def one(i: int) -> tuple[int, httpx.Response]:
        order = orders[i % len(orders)]
        return i, post(server, "/classify", json={"text": [texts[j] for j in order]})

    statuses = []
    for _ in range(3):  # one round of 64 has always been enough; the rounds only guard a freak schedule
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            results = list(pool.map(one, range(64)))
        for i, response in results:
            statuses.append(response.status_code)
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) >= 1
                assert_error(response, 503, "--max-queue")
            else:
                assert response.status_code == 200, response.text
                order = orders[i % len(orders)]
                assert scores_of("/classify", response.json()) == pytest.approx([want[j] for j in order], abs=ATOL)
        if 503 in statuses:
            break
    assert 503 in statuses and 200 in statuses, statuses
    assert_error(post(server, "/classify", json={"text": texts}), 413, "5 rows", "at most 4")
    assert_good(server, rm_dir, order=(3, 1, 0, 2))


def test_request_past_the_timeout_gets_504(start_server, rm_dir):
    # 1024 rows of ~480 tokens take ~20 s on 2 CPU cores (8 rows a batch), 10x the timeout; once the
    # request has timed out its rows leave the queue unscored, so the next request is quick again
    server = start_server(rm_dir[0], "--request-timeout", "2", "--max-batch-tokens", "4096")
    assert_good(server, rm_dir)
    response = post(server, "/classify", json={"text": [long_text(480)] * 1024})
    assert_error(response, 504, "--request-timeout")
    assert_good(server, rm_dir)
    assert_good(server, rm_dir, "/score")


def test_api_key(start_server, rm_dir):
    server = start_server(rm_dir[0], "--api-key", "s3cret-key")
    texts, _, _ = reference(rm_dir)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}, {"X-Api-Key": "x"}):
        response = post(server, "/classify", json={"text": texts}, headers=headers)
        assert_error(response, 401, "Authorization: Bearer")
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 401
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    assert httpx.get(server.url + "/metrics", timeout=10).status_code == 200
    key = {"Authorization": "Bearer s3cret-key"}
    for route in (*TEXT_ROUTES, "/score"):
        assert_good(server, rm_dir, route, headers=key)
    assert httpx.get(server.url + "/v1/models", headers=key, timeout=10).status_code == 200
