"""The transformers side of `bench.sampling`: `generate` with POLAR's sampling settings on a
model of the same shape (random weights; every row makes all its tokens). Imports no JAX.

    python -m polar_jax.bench.torch_generate CONFIG_JSON BATCH PROMPT NEW DEVICE [REPEATS]
prints one JSON line {"seconds", "new_tokens_per_s", "torch", "threads"}.
"""

import json
import sys

from polar_jax.bench.torch_side import median_seconds


def main(config_json: str, batch: int, prompt: int, new: int, device: str, repeats: int = 3) -> dict:
    """Median seconds of one `model.generate` call (T 1.0, top-k 50, top-p 0.9, dynamic cache)."""
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(**json.loads(config_json))
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
    tokens = torch.randint(1, config.vocab_size, (batch, prompt), device=device)
    kwargs = dict(
        do_sample=True,
        temperature=1.0,
        top_k=50,
        top_p=0.9,
        max_new_tokens=new,
        min_new_tokens=new,
        attention_mask=torch.ones_like(tokens),
        pad_token_id=0,
    )

    def run():
        with torch.inference_mode():
            model.generate(tokens, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = median_seconds(run, repeats)
    return {
        "seconds": seconds,
        "new_tokens_per_s": batch * new / seconds,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(main(a[0], int(a[1]), int(a[2]), int(a[3]), a[4], *(int(x) for x in a[5:]))))
