#!/usr/bin/env python3
"""Time to first token of a long RAG prompt against a running `torus serve` with chunk reuse (standard library only).

Sends 8 documents of about 410 characters once (their chunks are stored), then 4 shuffled orders, each
as one plain prompt (its own cache_salt: no prefix-cache hit) and as `documents` (reused with the
server's recompute policy); prints the median TTFTs and the share of prompt tokens recomputed.

Usage: bench/blend-ttft.py http://127.0.0.1:PORT   (the model served as "serve-bench", e.g. configs/serve-bench.yaml;
       under mpirun -np 2 with --sp-threshold below the prompt length the blend runs across the ranks)
"""
import json, random, statistics, sys, time, urllib.request
base = sys.argv[1]
rng = random.Random(7)
def stream(body):
    body = dict(body, model="serve-bench", stream=True, stream_options={"include_usage": True}, temperature=0, max_tokens=2)
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.perf_counter(); first = None; usage = {}
    with urllib.request.urlopen(req, timeout=300) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]": continue
            c = json.loads(line[6:])
            if c.get("usage"): usage = c["usage"]
            if first is None and any(ch.get("text") is not None for ch in c.get("choices", [])): first = time.perf_counter() - t0
    return first, usage
docs = ["Doc %d: " % i + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(400)) + "\n" for i in range(8)]
q = "Q: which document mentions the river?\nA:"
plain, blend, recompute = [], [], []
stream({"prompt": "warm up " * 10})
first, u = stream({"prompt": q, "documents": docs})  # stores the chunks
for i in range(4):
    order = docs[:]; rng.shuffle(order)
    t, _ = stream({"prompt": "".join(order) + q, "cache_salt": "plain-%d-%f" % (i, time.time())}); plain.append(t)
    t, u = stream({"prompt": q, "documents": order}); blend.append(t)
    recompute.append(u.get("reuse", {}).get("recomputed_tokens", 0) / max(1, u.get("prompt_tokens", 1)))
print("prompt tokens %d; TTFT median: plain prefill %.0f ms, blend %.0f ms (%.1fx); recomputed %.0f%% of prompt tokens"
      % (u.get("prompt_tokens", 0), 1000 * statistics.median(plain), 1000 * statistics.median(blend),
         statistics.median(plain) / statistics.median(blend), 100 * statistics.median(recompute)))
