"""Parity helper for Torus's transformers tests (run by the Swift tests; needs torch + transformers).

  make DIR SEED KV_HEADS TIED   write a random LlamaForCausalLM to DIR with save_pretrained
  run DIR                        load DIR with transformers; read {"tokens", "targets"} JSON on
                                 stdin; print {"logits", "loss"} JSON (also checks no tensor is
                                 missing or unexpected)
"""
import json
import sys

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM


def make(directory, seed, kv_heads, tied):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tied,
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # make norms non-trivial so they are tested
                p.copy_(1 + 0.2 * torch.randn_like(p))
    model.save_pretrained(directory, safe_serialization=True)


def run(directory):
    request = json.load(sys.stdin)
    model, info = LlamaForCausalLM.from_pretrained(directory, output_loading_info=True,
                                                   attn_implementation="eager", torch_dtype=torch.float32)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise SystemExit(f"transformers reported {problems}")
    model.eval()
    tokens = torch.tensor([request["tokens"]])
    with torch.no_grad():
        logits = model(input_ids=tokens).logits[0]
    loss = F.cross_entropy(logits, torch.tensor(request["targets"])).item()
    json.dump({"logits": logits.reshape(-1).tolist(), "loss": loss}, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
    elif sys.argv[1] == "run":
        run(sys.argv[2])
    else:
        raise SystemExit(__doc__)
