"""The transformers + PyTorch side of `bench.forward`, run where torch is installed.

    python -m polar_jax.bench.torch_forward CONFIG_JSON BATCH SEQ DTYPE DEVICE [REPEATS]
prints one JSON line: {"seconds": median forward seconds, "tokens_per_s": ...}. It imports
no JAX, so it runs under another interpreter (e.g. Python 3.11 with the local torch wheel).
"""

import json
import sys

from polar_jax.bench.torch_side import median_seconds


def main(config_json: str, batch: int, seq: int, dtype: str, device: str, repeats: int = 5) -> dict:
    """Median forward time of LlamaForCausalLM-like models built from `config_json` (random weights)."""
    import torch
    import transformers

    cfg_dict = json.loads(config_json)
    config = transformers.AutoConfig.for_model(**cfg_dict)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()
    tokens = torch.randint(1, config.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(tokens)

    def run():
        with torch.inference_mode():
            model(input_ids=tokens, attention_mask=mask, logits_to_keep=0).logits
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = median_seconds(run, repeats)
    return {
        "seconds": seconds,
        "tokens_per_s": batch * seq / seconds,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(main(a[0], int(a[1]), int(a[2]), a[3], a[4], *(int(x) for x in a[5:]))))
