"""64 concurrent clients x 10 requests of mixed sizes, lengths and protocols against one server (the
batch over 2 devices): every response is its own request's offline `score` rewards (each request's
rows are its own, so cross-talk cannot go unnoticed), none is lost, /metrics counts every row and
no compilation after warm-up. A 1-device server scores as the 2-device one does."""

from __future__ import annotations

import concurrent.futures
import random
import re

import httpx
import numpy as np
import pytest

from polar_jax.data import encoding
from polar_jax.serve import scorer

CLIENTS, REQUESTS_EACH, MAX_ROWS = 64, 10, 12
PROTOCOLS = ("classify", "pooling", "get_reward", "score")
ATOL = 1e-5
WORDS = (
    "sea tide moon wave salt wind gull shore foam deep blue green grey storm calm boat sail net fish reef "
    "sand rock cliff light house harbour anchor rope deck mast keel current drift swell spray mist dawn dusk"
).split()
# words of (prompt, reference, output) by size: about 20, 80, 120, 230, 330 and 500 tokens in all (with their
# spread, all seven widths), the wide ones rarer (a pass at width 512 costs on CPU what 8 at width 64 do)
SIZES = ((3, 3, 3), (15, 20, 20), (25, 30, 30), (50, 60, 60), (90, 100, 100), (200, 150, 150))
SIZE_WEIGHTS = (45, 25, 10, 10, 5, 5)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(max(1, n // 2), n)))


def make_row(rng: random.Random, tag: int) -> dict:
    """A row of random size whose output starts (and prompt ends) with `tag`: unique, even when cut."""
    (p, r, o) = rng.choices(SIZES, SIZE_WEIGHTS)[0]
    row = {"prompt": f"{_words(rng, p)} (question {tag})", "reference": _words(rng, r)}
    row["output"] = f"Answer {tag}: {_words(rng, o)}"
    if rng.random() < 0.1:
        row["wrapper"] = "pretrain"
    return row


def make_plan(seed: int = 0) -> list[list[tuple[str, list[dict]]]]:
    """Per client, its requests: (protocol, rows); every row of the plan distinct."""
    rng, tags = random.Random(seed), iter(range(10**9))

    def request() -> tuple[str, list[dict]]:
        return rng.choice(PROTOCOLS), [make_row(rng, next(tags)) for _ in range(rng.randint(1, MAX_ROWS))]

    return [[request() for _ in range(REQUESTS_EACH)] for _ in range(CLIENTS)]


def body(protocol: str, rows: list[dict], texts: list[str]) -> tuple[str, dict]:
    """The route and JSON body of one request."""
    if protocol == "score":
        return "/score", {"rows": rows}
    field = {"classify": "text", "pooling": "input", "get_reward": "query"}[protocol]
    return f"/{protocol}", {field: texts}


def read(protocol: str, answer) -> list[float]:
    """The rewards where each protocol's client reads them (the server runs --api vllm)."""
    if protocol == "classify":
        return [item["embedding"][0] for item in answer]
    if protocol == "pooling":
        return [item["data"][-1][0] for item in answer["data"]]
    return answer["rewards"]


def metric(text: str, name: str) -> float:
    """One unlabelled sample's value from Prometheus' text format."""
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


@pytest.fixture(scope="module")
def plan(rm_tokenizer, serve_encoding) -> list[list[tuple[str, list[dict], list[str]]]]:
    """`make_plan`'s requests with the client's texts of their rows."""

    def text(r: dict) -> str:
        return encoding.client_text(
            rm_tokenizer, r["prompt"], r["reference"], r["output"], serve_encoding, r.get("wrapper")
        )

    out = [[(protocol, rows, [text(r) for r in rows]) for protocol, rows in client] for client in make_plan()]
    texts = [t for client in out for _, _, request_texts in client for t in request_texts]
    assert len(set(texts)) == len(texts)  # no two rows alike: a response swapped between requests shows
    return out


def with_rewards(requests: list, offline_rewards) -> list[tuple[str, list[dict], list[str], np.ndarray]]:
    """Requests (protocol, rows, texts) with the offline `score` rewards of their rows."""
    expected = offline_rewards([row for _, rows, _ in requests for row in rows], batch_size=16, shared_prefix=False)
    ends = np.cumsum([len(rows) for _, rows, _ in requests])
    return [(*request, e) for request, e in zip(requests, np.split(expected, ends[:-1]))]


def test_the_load_is_mixed(plan, rm_tokenizer, serve_encoding):
    """The plan hits every protocol, every request size and every bucket width (64, 96, ... 512)."""
    requests = [request for client in plan for request in client]
    assert {protocol for protocol, *_ in requests} == set(PROTOCOLS)
    assert {len(rows) for _, rows, _ in requests} == set(range(1, MAX_ROWS + 1))
    texts = [text[: -len(serve_encoding.reward_token)] for _, _, request_texts in requests for text in request_texts]
    lengths = np.asarray([len(ids) + 1 for ids in rm_tokenizer(texts, add_special_tokens=True)["input_ids"]])
    buckets = scorer.make_buckets(serve_encoding.max_length, 16384, 2)  # the servers' (--max-batch-tokens 16384)
    assert [b.width for b in buckets] == [64, 96, 128, 192, 256, 384, 512]
    counts = np.bincount([scorer.bucket_index(buckets, n) for n in lengths], minlength=len(buckets))
    print("rows per width", dict(zip([b.width for b in buckets], counts.tolist())))
    assert (counts >= 100).all(), counts


def _client(url: str, requests: list) -> list[tuple[int, list[float] | str]]:
    """One client's requests in turn on one connection: (status, rewards or the error body)."""
    answers = []
    with httpx.Client(base_url=url, timeout=180) as client:
        for protocol, rows, texts, _ in requests:
            path, payload = body(protocol, rows, texts)
            response = client.post(path, json=payload)
            ok = response.status_code == 200
            answers.append((response.status_code, read(protocol, response.json()) if ok else response.text))
    return answers


@pytest.mark.slow
def test_concurrent_clients_get_their_own_rewards(start_server, rm_dir, plan, offline_rewards):
    """64 clients at once, 20 requests each: every answer is its own request's offline rewards, none lost;
    /metrics counts every row and no compilation after warm-up."""
    flat = with_rewards([request for client in plan for request in client], offline_rewards)
    load = [flat[i : i + REQUESTS_EACH] for i in range(0, len(flat), REQUESTS_EACH)]
    server = start_server(rm_dir[0], "--max-queue", str(CLIENTS * MAX_ROWS), devices=2)  # all 64 clients' rows
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda requests: _client(server.url, requests), load))
    assert [len(a) for a in answers] == [REQUESTS_EACH] * CLIENTS
    for client, client_answers in zip(load, answers):
        for (protocol, rows, _, expected), (status, got) in zip(client, client_answers):
            assert status == 200, got
            assert len(got) == len(rows)
            np.testing.assert_allclose(np.asarray(got, np.float32), expected, atol=ATOL, rtol=0, err_msg=protocol)
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert metric(metrics, "polar_serve_compiles_after_warmup_total") == 0.0
    assert metric(metrics, "polar_serve_rows_total") == sum(len(rows) for c in load for _, rows, *_ in c)
    assert metric(metrics, "polar_serve_batch_rows_count") < CLIENTS * REQUESTS_EACH  # requests shared batches


def test_one_device_scores_as_two(start_server, shared_server, rm_dir, plan, offline_rewards):
    """The same rows of every width on a 1-device server and on the 2-device shared one: the same rewards."""
    requests = with_rewards([request for client in plan[:4] for request in client], offline_rewards)  # ~500 rows
    rows = [row for _, request_rows, _, _ in requests for row in request_rows]
    texts = [text for _, _, request_texts, _ in requests for text in request_texts]
    expected = np.concatenate([e for *_, e in requests])
    one = start_server(rm_dir[0], devices=1)
    got = {}
    for name, server in (("1 device", one), ("2 devices", shared_server)):
        for protocol in ("score", "pooling"):
            path, payload = body(protocol, rows, texts)
            response = httpx.post(server.url + path, json=payload, timeout=180)
            assert response.status_code == 200, response.text
            got[name, protocol] = np.asarray(read(protocol, response.json()), np.float32)
    for protocol in ("score", "pooling"):
        np.testing.assert_allclose(got["1 device", protocol], got["2 devices", protocol], atol=ATOL, rtol=0)
        np.testing.assert_allclose(got["1 device", protocol], expected, atol=ATOL, rtol=0)
