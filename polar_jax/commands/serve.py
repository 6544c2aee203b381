"""Serve a POLAR reward model over HTTP to the clients RL stacks already run.

    python -m polar_jax serve --model DIR [--host 127.0.0.1] [--port 30000] [--api vllm|lmdeploy]

Routes: POST /classify (sglang), /pooling (vLLM, or lmdeploy with --api lmdeploy), /get_reward
(OpenRLHF), /score (native rows {prompt, reference, output[, wrapper]}); GET /health (503 until
warm-up has compiled every bucket shape), /metrics (Prometheus), /v1/models. Texts arrive built by
the client (the official `RewardModelClient`), ending in the reward token's text.

Requests from every connection share one queue; batches take one of a few fixed shapes (widths
64, 96, 128, 192, ... up to --max-length; rows from --max-batch-tokens), all compiled at start-up. A full
queue answers 503 with Retry-After; SIGTERM stops accepting, finishes what is in flight, exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

from polar_jax.commands import score as score_command

log = logging.getLogger(__name__)
API_KEY_ENV = "POLAR_JAX_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `serve`."""
    parser.add_argument("--model", required=True, metavar="DIR", help="reward model: polar_jax or HF directory, GGUF")
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer directory or .gguf (default: the model's)")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run a checkpoint's own tokenizer code (InternLM2)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=30000, help="TCP port")
    parser.add_argument(
        "--api", choices=("vllm", "lmdeploy"), default="vllm", help="the response shape of POST /pooling"
    )
    parser.add_argument(
        "--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set)"
    )
    parser.add_argument("--max-batch-tokens", type=int, default=16384, help="token slots per forward pass")
    parser.add_argument("--max-queue", type=int, default=4096, help="rows waiting at most; more get 503")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds before a request gets 504")
    parser.add_argument("--max-body-bytes", type=int, default=64 * 2**20, help="larger request bodies get 413")
    parser.add_argument("--fsdp", type=int, default=1, help="devices each weight is sharded over (the rest: data)")
    parser.add_argument("--tensor", type=int, default=1, help="devices each layer is split over (tensor parallel)")
    score_command.add_encoding_arguments(parser)


def _check(args: argparse.Namespace) -> None:
    for flag in ("max_batch_tokens", "max_queue", "max_body_bytes", "fsdp", "tensor"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')}={getattr(args, flag)}; it must be at least 1")
    if args.request_timeout <= 0:
        raise ValueError(f"--request-timeout={args.request_timeout}; it must be positive")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port={args.port}; choose 1 .. 65535")


def run(args: argparse.Namespace) -> int:
    """Load the model, start uvicorn, serve until SIGTERM or Ctrl-C."""
    import uvicorn

    from polar_jax.serve import app as serve_app
    from polar_jax.serve import scorer

    _check(args)
    enc_cfg = score_command.encoding_config_from_args(args, args.model)
    served = scorer.load(
        args.model,
        args.tokenizer,
        enc_cfg,
        max_batch_tokens=args.max_batch_tokens,
        max_tokens=args.max_length,
        mesh_axes={"data": -1, "fsdp": args.fsdp, "tensor": args.tensor},
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )
    settings = serve_app.Settings(
        api=args.api,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_queue_rows=args.max_queue,
        request_timeout=args.request_timeout,
        max_body_bytes=args.max_body_bytes,
    )
    log.info(
        "serving %s: buckets %s, on %d device(s)",
        served.name,
        ", ".join(f"{b.rows}x{b.width}" for b in served.buckets),
        served.mesh.size,
    )
    config = uvicorn.Config(
        serve_app.create_app(served, settings),
        host=args.host,
        port=args.port,
        log_level="info" if args.verbose else "warning",
        access_log=args.verbose,
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it: with this handler the process
    # exits 0 after that shutdown instead of dying of the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    log.info("stopped")
    return 0
