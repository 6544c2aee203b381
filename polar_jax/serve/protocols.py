"""The request and response shapes `serve` speaks, one per client stack (`../shared/REFERENCE.md`).

| path | request | response (where the client reads the score) |
| --- | --- | --- |
| POST /classify (sglang) | {"model", "text": [str]} | [{"index", "embedding": [score]}] (`embedding[0]`) |
| POST /pooling (vLLM, --api vllm) | {"input": [str]} | {"data": [{"index", "data": [[score]]}]} (`data[-1][0]`) |
| POST /pooling (lmdeploy, --api lmdeploy) | {"input": [str]} | {"data": [{"index", "data": score}]} |
| POST /get_reward (OpenRLHF) | {"query": [str]} | {"rewards", "scores", "extra_logs"} |
| POST /score (native) | {"rows": [{prompt, reference, output[, wrapper]}]} | {"rewards": [score]} |

A vLLM reward model returns a score per token; the client reads the last one, so `/pooling`
returns only that one (`[[score]]`). A single string is accepted where a list is, as the
servers themselves accept it.
"""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel, ConfigDict, field_validator

APIS = ("vllm", "lmdeploy")


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @field_validator("text", "input", "query", mode="before", check_fields=False)
    @classmethod
    def _one_text_is_a_list(cls, value):
        return [value] if isinstance(value, str) else value


class ClassifyRequest(_Request):
    """sglang's /classify (`--is-embedding`)."""

    model: str | None = None
    text: list[str]


class PoolingRequest(_Request):
    """vLLM's and lmdeploy's /pooling."""

    model: str | None = None
    input: list[str]


class GetRewardRequest(_Request):
    """OpenRLHF's /get_reward (its `prompts` and `labels` are accepted and not used: the texts are whole)."""

    query: list[str]
    prompts: list | None = None
    labels: list | None = None


class ScoreRequest(_Request):
    """The native /score: rows checked like `score`'s input rows (`data.schema`)."""

    rows: list


def classify_response(scores: list[float], lengths: list[int]) -> list[dict]:
    """sglang's list of embeddings, one per text."""
    return [
        {"index": i, "embedding": [s], "meta_info": {"prompt_tokens": n}}
        for i, (s, n) in enumerate(zip(scores, lengths))
    ]


def pooling_response(api: str, model: str, scores: list[float], lengths: list[int]) -> dict:
    """vLLM's (`data[-1][0]`) or lmdeploy's (`data`) pooling response."""
    if api not in APIS:
        raise ValueError(f"api={api!r}; choose one of {', '.join(APIS)}")
    data = [{"index": i, "object": "pooling", "data": [[s]] if api == "vllm" else s} for i, s in enumerate(scores)]
    tokens = int(sum(lengths))
    return {
        "id": f"pool-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def get_reward_response(scores: list[float]) -> dict:
    """OpenRLHF's serve_rm response (it returns the rewards twice, and logs nothing extra here)."""
    return {"rewards": scores, "scores": scores, "extra_logs": {}}


def models_response(model: str, max_tokens: int) -> dict:
    """GET /v1/models, as OpenAI-compatible servers answer it."""
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "owned_by": "polar_jax", "created": 0, "max_model_len": max_tokens}],
    }


def error_body(status: int, message: str) -> dict:
    """The error shape of vLLM's OpenAI-compatible server."""
    kinds = {
        400: "BadRequestError",
        401: "AuthenticationError",
        413: "RequestTooLarge",
        503: "ServiceUnavailable",
        504: "GatewayTimeout",
    }
    return {"object": "error", "message": message, "type": kinds.get(status, "ServerError"), "code": status}


def validation_message(errors: list[dict]) -> str:
    """pydantic's errors as `field[i].sub: reason; ...` (the body's own path, without "body")."""
    parts = []
    for e in errors[:5]:
        loc = [x for x in e.get("loc", ()) if x != "body"]
        if e.get("type") == "json_invalid":
            parts.append(f"malformed JSON: {e.get('ctx', {}).get('error', e.get('msg'))}")
            continue
        path = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".")
        parts.append(f"{f'field {path}' if path else 'the body'}: {e.get('msg')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more
