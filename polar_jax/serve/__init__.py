"""`serve`: a POLAR reward model behind HTTP, speaking the protocols the official client, verl and
OpenRLHF already use (`protocols`), with one dynamically batched queue (`batcher`) over a few
compiled shapes (`scorer`), Prometheus metrics (`metrics`), the FastAPI app (`app`) and a client
with retries (`client`). The command is `python -m polar_jax serve` (`commands/serve.py`)."""
