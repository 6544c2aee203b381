"""The reward server against offline scoring: rows/s, latency and errors at 1, 8 and 32 clients.

    python -m polar_jax.bench.serve                         # demo-size random reward model, CPU
    python -m polar_jax.bench.serve --rows 2048 --rows-per-request 16 --clients 1,32

One run: (1) a demo-size POLAR reward model with random weights (Llama shape, `--d-model` x
`--layers`) is saved as a polar_jax directory with SmolLM2's tokenizer and the reward tokens added;
(2) --rows rows {prompt, reference, output} of English words with a long-tailed spread of lengths
(prompts log-uniform, responses log-normal, some cut at --max-length / 4) and their client texts
(`encoding.client_text`, what the official client POSTs); (3) offline: `scoring.score_rows` on those
rows in this process (tokenisation included, --offline-batch rows a call, one warm-up pass first);
(4) `python -m polar_jax serve` in a subprocess on 127.0.0.1 (a free port, JAX_PLATFORMS=cpu, one
device), ready at GET /health 200; (5) for each --clients count, that many threads (an httpx.Client
each) send every row once to POST /pooling, --rows-per-request texts a request: rows/s over the wall
time, request latency p50 / p99, errors (non-200 or the wrong number of scores). Server scores must
equal offline ones (|delta| <= 1e-4) and no compile may follow warm-up (/metrics).

Below the table: per client count, the server's model time (sum of its batch seconds) as a share of
the wall time, rows per batch and padding, from /metrics: where the time went.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from polar_jax.bench.common import print_table

SCORE_TOLERANCE = 1e-4
WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an which have not but"
    " one all were when we there can more if will each about how up out them then she many some so"
    " these would other into has two time could make like than first water been call who oil now find"
    " long down day did get come made may part model reward score policy answer question reference"
    " function value returns list dictionary key loop class method module object string number error"
    " train data batch token layer weight gradient server request client response length prompt"
).split()


def parse_clients(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]."""
    clients = [int(c) for c in text.split(",") if c.strip()]
    if not clients or min(clients) < 1:
        raise argparse.ArgumentTypeError(f"--clients {text!r}: comma-separated counts >= 1")
    return clients


def encoding_config(max_length: int):
    """The run's encoding: --max-length tokens, responses cut at a quarter of that."""
    from polar_jax.data import encoding

    return encoding.EncodingConfig(max_length=max_length, max_response_length=max_length // 4)


def build_model_dir(out: pathlib.Path, d_model: int, layers: int, seed: int = 0):
    """A random reward model saved as a polar_jax directory with SmolLM2's tokenizer (reward tokens
    added); returns (directory, tokenizer, Model)."""
    from polar_jax.data import encoding
    from polar_jax.io import gguf, polar_format, tokenizers
    from polar_jax.io.model import Model
    from polar_jax.models import families
    from polar_jax.models.config import ModelConfig
    from polar_jax.train.lm import numpy_init_params

    tokenizer = tokenizers.load_tokenizer(gguf.smollm2_gguf_path())
    reward_id = encoding.resolve_reward_token_id(tokenizer, encoding.EncodingConfig(), add_missing=True)
    heads = max(1, d_model // 16)
    cfg = ModelConfig(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        d_model=d_model,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(1, heads // 2),
        head_dim=d_model // heads,
        mlp_dim=2 * d_model,
        heads=("reward",),
        tie_embeddings=False,
        init_std=0.1,  # rewards of order 1: the server-offline comparison is not one of zeros
        dtype="float32",
    )
    hf_config = families.hf_config_for(cfg, "llama", "reward", {"reward_token_id": reward_id})
    model = Model(cfg, numpy_init_params(cfg, seed), "llama", hf_config)
    polar_format.save_polar(model, out)
    tokenizer.save_pretrained(str(out))
    return out, tokenizer, model


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, size=max(1, n)))


def make_rows(n: int, max_length: int, seed: int = 0) -> list[dict]:
    """`n` rows of random words: prompts log-uniform in 4 .. max_length / 4 words, reference and
    output log-normal (median max_length / 16 words, sigma 0.8, some over the response cut)."""
    rng = np.random.default_rng(seed)
    longest_prompt, median = max(8, max_length // 4), max(4, max_length // 16)
    rows = []
    for i in range(n):
        prompt_words = int(np.exp(rng.uniform(np.log(4), np.log(longest_prompt))))
        ref_words, out_words = (int(min(2 * median * 4, rng.lognormal(np.log(median), 0.8))) for _ in range(2))
        rows.append(
            {
                "prompt": f"Question {i}: {_words(rng, prompt_words)}?",
                "reference": _words(rng, ref_words),
                "output": _words(rng, out_words),
            }
        )
    return rows


def offline_rows_per_s(model, tokenizer, rows: list[dict], enc_cfg, batch: int) -> tuple[float, np.ndarray]:
    """(rows/s, scores) of `scoring.score_rows` on `rows`, timed after one warm-up pass (compiles)."""
    from polar_jax import scoring

    def run():
        return scoring.score_rows(
            model, tokenizer, rows, enc_cfg, batch_size=batch, progress=False, shared_prefix=False
        )

    run()
    start = time.perf_counter()
    scores = run()
    return len(rows) / (time.perf_counter() - start), scores


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(model_dir: pathlib.Path, args: argparse.Namespace, log_path: pathlib.Path, timeout: float = 600):
    """`python -m polar_jax serve` on 127.0.0.1 (one CPU device), yielded as its URL once /health is 200."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "JAX_PLATFORMS": args.platform, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    argv = [sys.executable, "-m", "polar_jax", "serve", "--model", str(model_dir), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--max-length", str(args.max_length)]
    argv += ["--max-response-length", str(args.max_length // 4), "--max-batch-tokens", str(args.max_batch_tokens)]
    argv += ["--max-queue", str(max(4096, args.rows))]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        try:
            end = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited {process.returncode}:\n{log_path.read_text()[-4000:]}")
                if time.monotonic() > end:
                    raise TimeoutError(f"server not ready in {timeout} s:\n{log_path.read_text()[-4000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.25)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


@dataclasses.dataclass
class ClientRun:
    """One client count's pass over every row."""

    clients: int
    seconds: float
    latencies: list[float]
    errors: int
    scores: np.ndarray  # NaN where a request failed
    metrics: dict  # /metrics deltas over the pass (`server_metrics`)


def server_metrics(url: str) -> dict:
    """The /metrics numbers the table and the breakdown use."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {
        "polar_serve_compiles_after_warmup_total": "compiles_after_warmup",
        "polar_serve_compiles_total": "compiles",
        "polar_serve_batch_seconds_sum": "model_s",
        "polar_serve_batch_rows_sum": "batch_rows",
        "polar_serve_batch_rows_count": "batches",
        "polar_serve_batch_padding_sum": "padding_sum",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name in wanted:
                out[wanted[sample.name]] += sample.value
    return out


def send_all(url: str, texts: list[str], per_request: int, clients: int) -> ClientRun:
    """Every text once, `per_request` a POST /pooling, from `clients` threads sharing one work queue."""
    import httpx

    work = queue.Queue()
    for start in range(0, len(texts), per_request):
        work.put(start)
    scores = np.full(len(texts), np.nan)
    latencies, errors, lock = [], [0], threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                try:
                    start = work.get_nowait()
                except queue.Empty:
                    return
                chunk = texts[start : start + per_request]
                began = time.perf_counter()
                try:
                    response = http.post("/pooling", json={"input": chunk})
                    data = response.json().get("data", []) if response.status_code == 200 else []
                except (httpx.HTTPError, ValueError):
                    data = []
                took = time.perf_counter() - began
                with lock:
                    latencies.append(took)
                    if len(data) != len(chunk):
                        errors[0] += 1
                        continue
                    scores[start : start + len(chunk)] = [item["data"][-1][0] for item in data]

    before = server_metrics(url)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    after = server_metrics(url)
    return ClientRun(clients, seconds, latencies, errors[0], scores, {k: after[k] - before[k] for k in after})


def table_rows(offline: float, runs: list[ClientRun], n: int) -> list[dict]:
    """The printed table: offline first, then one row per client count."""
    rows = [{"mode": "offline", "clients": "-", "rows/s": f"{offline:,.1f}", "ratio to offline": "1.00x"}]
    rows[0].update({"p50 ms": "-", "p99 ms": "-", "errors": 0})
    for run in runs:
        rate = n / run.seconds
        ms = np.percentile(np.asarray(run.latencies) * 1e3, [50, 99]) if run.latencies else (np.nan, np.nan)
        rows.append(
            {
                "mode": "server",
                "clients": run.clients,
                "rows/s": f"{rate:,.1f}",
                "ratio to offline": f"{rate / offline:.2f}x",
                "p50 ms": f"{ms[0]:.1f}",
                "p99 ms": f"{ms[1]:.1f}",
                "errors": run.errors,
            }
        )
    return rows


def breakdown(run: ClientRun) -> str:
    """Where one client count's wall time went, on the server's side."""
    m = run.metrics
    batches = max(m["batches"], 1)
    return (
        f"  {run.clients} client(s): model {m['model_s']:.2f} s of {run.seconds:.2f} s wall "
        f"({m['model_s'] / run.seconds:.0%}), {int(m['batches'])} batches, "
        f"{m['batch_rows'] / batches:.1f} rows per batch, padding {m['padding_sum'] / batches:.0%}"
    )


def run_bench(args: argparse.Namespace) -> dict:
    """The whole benchmark; prints the table and returns {offline, runs, max_delta, compiles}."""
    from polar_jax.data import encoding

    enc_cfg = encoding_config(args.max_length)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        tmp = pathlib.Path(tmp)
        model_dir, tokenizer, model = build_model_dir(tmp / "rm", args.d_model, args.layers)
        rows = make_rows(args.rows, args.max_length, args.seed)
        texts = [encoding.client_text(tokenizer, r["prompt"], r["reference"], r["output"], enc_cfg) for r in rows]
        lengths = [
            len(encoding.encode(tokenizer, r["prompt"], r["reference"], r["output"], enc_cfg, 0).ids) for r in rows
        ]
        offline, offline_scores = offline_rows_per_s(model, tokenizer, rows, enc_cfg, args.offline_batch)
        with server_process(model_dir, args, tmp / "server.log") as url:
            warm = server_metrics(url)
            send_all(url, texts[: args.rows_per_request * 4], args.rows_per_request, 1)  # HTTP warm-up
            runs = [send_all(url, texts, args.rows_per_request, c) for c in args.clients]
            final = server_metrics(url)
    deltas = [np.abs(r.scores - offline_scores) for r in runs]
    max_delta = max(float(np.nanmax(d)) if np.isfinite(d).any() else 0.0 for d in deltas)
    mismatched = sum(int(np.sum(d > SCORE_TOLERANCE)) for d in deltas)
    print(
        f"{len(rows)} rows, tokens per row p50 {np.percentile(lengths, 50):.0f} / p90 {np.percentile(lengths, 90):.0f}"
        f" / max {max(lengths)}, {args.rows_per_request} per request; model d_model {args.d_model}, "
        f"{args.layers} layers, {model.cfg.num_params() / 1e6:.2f}M params, float32; offline batch {args.offline_batch}"
    )
    print_table(table_rows(offline, runs, len(rows)), "offline scoring.score_rows against POST /pooling")
    print(
        f"compiles: {int(warm['compiles'])} at warm-up, {int(warm['compiles_after_warmup'])} after it at ready, "
        f"{int(final['compiles_after_warmup'])} after it at the end"
    )
    print(f"scores: max |server - offline| {max_delta:.1e}, {mismatched} over {SCORE_TOLERANCE:g}")
    print("server time:")
    for run in runs:
        print(breakdown(run))
    return {
        "offline": offline,
        "runs": runs,
        "max_delta": max_delta,
        "mismatched": mismatched,
        "compiles_after_warmup": int(final["compiles_after_warmup"]),
    }


def parse(argv=None) -> argparse.Namespace:
    """The benchmark's flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1024, help="rows scored by each mode")
    p.add_argument("--rows-per-request", type=int, default=8, help="texts per POST /pooling")
    p.add_argument("--clients", type=parse_clients, default=[1, 8, 32], help="comma-separated client counts")
    p.add_argument("--d-model", type=int, default=64, help="the reward model's width (the demo's: 64)")
    p.add_argument("--layers", type=int, default=2, help="the reward model's layers (the demo's: 2)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per sequence (server and offline)")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="the server's token slots per pass")
    p.add_argument("--offline-batch", type=int, default=32, help="rows per score_rows forward pass")
    p.add_argument("--platform", default="cpu", help="JAX platform of the server and of offline scoring")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Run the benchmark and print its table."""
    import jax

    args = parse(argv)
    jax.config.update("jax_platforms", args.platform)  # offline on the server's platform
    return run_bench(args)


if __name__ == "__main__":
    main()
