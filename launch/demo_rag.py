#!/usr/bin/env python3
"""RAG requests against a running `torus serve` (the demo's client; Python standard library only).

For each held-out question (documents + question, from `torus data synth --kind rag`):
  1. full prefill: the documents and the question as one prompt (a cache_salt of its own, so no
     prefix-cache hit), streamed, timing the first token;
  2. chunk reuse: the documents sent as `documents`, so their KV is stored by the first request
     that carries them and reused by later ones in any order, with the server's recompute policy.
Prints each question, both answers, the expected answer, both times to first token and the share
of prompt tokens recomputed; then the totals. Exits non-zero if a request fails.

Usage: demo_rag.py --base http://127.0.0.1:PORT --model NAME --questions heldout.jsonl [--count 8]
"""
import argparse
import json
import statistics
import sys
import time
import urllib.request

p = argparse.ArgumentParser()
p.add_argument("--base", required=True)
p.add_argument("--model", required=True)
p.add_argument("--questions", required=True)
p.add_argument("--count", type=int, default=8)
p.add_argument("--max-tokens", type=int, default=32)
args = p.parse_args()


def stream(body):
    """POSTs a streaming completion; returns (text, seconds to the first text, usage)."""
    body = dict(body, model=args.model, stream=True, stream_options={"include_usage": True}, temperature=0,
                max_tokens=args.max_tokens, stop=["\n"])
    req = urllib.request.Request(args.base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, text, usage = None, "", None
    with urllib.request.urlopen(req, timeout=300) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices", []):
                if c.get("text"):
                    if first is None:
                        first = time.perf_counter() - t0
                    text += c["text"]
    return text.strip(), first if first is not None else time.perf_counter() - t0, usage or {}


examples = [json.loads(line) for line in open(args.questions) if line.strip()][: args.count]
full_ttft, reuse_ttft, shares = [], [], []
right = {"full": 0, "reuse": 0}
for i, e in enumerate(examples):
    prompt = "".join(e["documents"]) + e["question"]
    full, t_full, _ = stream({"prompt": prompt, "cache_salt": f"demo-full-{i}-{time.time()}"})
    reused, t_reuse, u = stream({"prompt": e["question"], "documents": e["documents"]})
    reuse = u.get("reuse", {})
    share = reuse.get("recomputed_tokens", 0) / max(1, u.get("prompt_tokens", 1))
    full_ttft.append(t_full)
    reuse_ttft.append(t_reuse)
    shares.append(share)
    ok_full, ok_reuse = full == e["answer"], reused == e["answer"]
    right["full"] += ok_full
    right["reuse"] += ok_reuse
    question = e["question"].replace("Q: ", "").replace("\nA:", "")
    print(f"[{i + 1}/{len(examples)}] {question}  ({e['kind']}, {len(e['documents'])} documents, {u.get('prompt_tokens', 0)} prompt tokens)")
    print(f"    expected:      {e['answer']}")
    print(f"    full prefill:  {full}  [{'right' if ok_full else 'WRONG'}]  first token {1000 * t_full:.0f} ms")
    print(f"    chunk reuse:   {reused}  [{'right' if ok_reuse else 'WRONG'}]  first token {1000 * t_reuse:.0f} ms, "
          f"{reuse.get('chunk_hits', 0)}/{reuse.get('chunks', 0)} chunks from the store, {100 * share:.0f}% of prompt tokens recomputed")
    sys.stdout.flush()

n = len(examples)
print(f"answers right: full prefill {right['full']}/{n}, chunk reuse {right['reuse']}/{n}")
later = reuse_ttft[1:] or reuse_ttft
print(f"time to first token, median: full prefill {1000 * statistics.median(full_ttft):.0f} ms, chunk reuse "
      f"{1000 * statistics.median(later):.0f} ms (requests 2-{n}, after the first stored its chunks); "
      f"prompt tokens recomputed with reuse: median {100 * statistics.median(shares[1:] or shares):.0f}%")
