"""The transformers + PyTorch side of `bench.train_step`: the same reward model, the same
tokens per step, bf16 autocast over float32 parameters, fused AdamW. Imports no JAX.

    python -m polar_jax.bench.torch_train CONFIG_JSON BATCH SEQ MODE [STEPS]
MODE: eager | compile. Prints one JSON line {"seconds", "tokens_per_s", "peak_gib", ...}.
"""

import json
import sys
import time


def main(config_json: str, batch: int, seq: int, mode: str, steps: int = 10) -> dict:
    """Median step time of LlamaForSequenceClassification (num_labels=1) with a pairwise loss."""
    import torch
    import transformers

    config = transformers.LlamaConfig(**json.loads(config_json), num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.LlamaForSequenceClassification(config)  # float32 parameters
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    tokens = torch.randint(1, config.vocab_size, (batch, seq), device="cuda")

    def loss_fn(ids):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            rewards = model(input_ids=ids).logits[:, 0].float()
        return -torch.nn.functional.logsigmoid(rewards[0::2] - rewards[1::2]).mean()  # rows (2i, 2i+1) = a pair

    if mode == "compile":
        loss_fn = torch.compile(loss_fn)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    for _ in range(3):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    return {
        "seconds": seconds,
        "tokens_per_s": batch * seq / seconds,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attention": config._attn_implementation,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(main(a[0], int(a[1]), int(a[2]), a[3], *(int(x) for x in a[4:]))))
