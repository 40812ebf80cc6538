#!/usr/bin/env python3
"""Drives a running `torus serve` with the official `openai` client, httpx and Prometheus'
text parser: completions and chat, streaming and not, usage chunks, stop strings, n, logprobs,
greedy tokens against `torus generate`, prefix-cache hits per cache_salt, error statuses,
client disconnects, 64 concurrent clients, /metrics, and SIGTERM.

Usage: openai_client_test.py --base http://127.0.0.1:PORT --key KEY --torus BIN --model-dir DIR
       --name NAME --max-len N --pid PID [--busy-base URL]
Prints one line per check and 'N passed, N failed'; exits non-zero on any failure.
"""
import argparse
import concurrent.futures as cf
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

try:  # the openai client 3.x depends on httpx2, earlier ones on httpx
    import httpx2 as httpx
except ImportError:
    import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

p = argparse.ArgumentParser()
for a in ["--base", "--key", "--torus", "--model-dir", "--name", "--busy-base"]:
    p.add_argument(a)
p.add_argument("--max-len", type=int)
p.add_argument("--checks", default="", help="comma-separated name fragments: run only the checks whose name has one")
p.add_argument("--pid", type=int)
args = p.parse_args()

client = openai.OpenAI(base_url=args.base + "/v1", api_key=args.key, max_retries=0, timeout=60)
headers = {"Authorization": f"Bearer {args.key}"}
results = []


registered = []


def check(name):
    def wrap(fn):
        registered.append((name, fn))
        return fn
    return wrap


def run_checks():
    wanted = [w for w in args.checks.split(",") if w]
    for name, fn in registered:
        if wanted and not any(w in name for w in wanted):
            continue
        t = time.time()
        try:
            fn()
            results.append((name, None))
            print(f"ok   {name} ({time.time() - t:.2f}s)", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported by name
            results.append((name, e))
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)


def metrics():
    text = httpx.get(args.base + "/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + ("" if not s.labels else "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "model_name") + "}")
            out[key.replace("{}", "")] = s.value
    return out


def reference(prompt_ids, n):
    out = subprocess.run([args.torus, "generate", "--model", args.model_dir, "--prompt-ids", ",".join(map(str, prompt_ids)),
                          "--max-tokens", str(n), "--ids"], capture_output=True, text=True, check=True, env={**os.environ, "TORUS_NO_REEXEC": "1"})
    return [int(x) for x in out.stdout.strip().split(",") if x]


def served_ids(prompt_ids, n, top=0):
    r = client.completions.create(model=args.name, prompt=prompt_ids, max_tokens=n, temperature=0, logprobs=max(top, 1),
                                  extra_body={"return_tokens_as_token_ids": True, "ignore_eos": True})
    lp = r.choices[0].logprobs
    return [int(t.split(":")[1]) for t in lp.tokens], lp


def same_greedy(prompt_ids, n):
    got, lp = served_ids(prompt_ids, n, top=5)
    want = reference(prompt_ids, n)
    assert len(got) == len(want), f"{len(got)} tokens served, {len(want)} from torus generate"
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            # A near-tie broken the other way by batched products: both within fp32 rounding.
            top = lp.top_logprobs[i]
            lw = top.get(f"token_id:{w}")
            lg = lp.token_logprobs[i]
            assert lw is not None and abs(lw - lg) < 1e-4, f"token {i}: served {g}, generate {w}; logprobs {lg} vs {lw}"
            return


rng = random.Random(7)


def prompt(n):
    return [rng.randrange(32, 127) for _ in range(n)]


@check("GET /v1/models lists the model with max_model_len and root")
def _():
    m = client.models.list().data
    assert [x.id for x in m] == [args.name], m
    raw = httpx.get(args.base + "/v1/models", headers=headers).json()["data"][0]
    assert raw["max_model_len"] == args.max_len and raw["root"] == args.model_dir, raw


@check("greedy completion equals torus generate")
def _():
    same_greedy(prompt(40), 24)


@check("16 concurrent requests of mixed lengths each equal torus generate")
def _():
    cases = [(prompt(5 + 23 * i), 4 + (7 * i) % 29) for i in range(16)]
    with cf.ThreadPoolExecutor(16) as pool:
        for f in [pool.submit(same_greedy, pr, n) for pr, n in cases]:
            f.result()


@check("long prompts prefilled across the ranks, mixed with short ones, each equal torus generate")
def _():
    cases = [(prompt(n), 12) for n in (40, 97, 150, 256, 301, 7, 64, 180)]
    with cf.ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(same_greedy, pr, n) for pr, n in cases]:
            f.result()


@check("text completion: string prompt, list of prompts, echo, usage")
def _():
    r = client.completions.create(model=args.name, prompt="The capital", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and len(r.choices) == 1
    assert r.usage.prompt_tokens == len("The capital".encode()) and r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5 and r.choices[0].finish_reason == "length"
    two = client.completions.create(model=args.name, prompt=["a", "bb"], max_tokens=3, temperature=0)
    assert [c.index for c in two.choices] == [0, 1] and two.usage.prompt_tokens == 3
    e = client.completions.create(model=args.name, prompt="Echo me", max_tokens=2, temperature=0, echo=True)
    assert e.choices[0].text.startswith("Echo me")


@check("streaming completion: chunks, one usage chunk with empty choices, [DONE]")
def _():
    stream = client.completions.create(model=args.name, prompt="Stream", max_tokens=12, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    text, finishes, usage = "", [], None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
            if chunk.choices[0].finish_reason:
                finishes.append(chunk.choices[0].finish_reason)
        else:
            usage = chunk.usage
    whole = client.completions.create(model=args.name, prompt="Stream", max_tokens=12, temperature=0)
    assert text == whole.choices[0].text, (text, whole.choices[0].text)
    assert finishes == ["length"] and usage.completion_tokens == 12
    raw = httpx.post(args.base + "/v1/completions", headers=headers, json={"prompt": "x", "max_tokens": 2, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n"), raw.text[-40:]


@check("chat: non-streaming and streaming agree; role only in the first chunk")
def _():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    r = client.chat.completions.create(model=args.name, messages=msgs, max_tokens=10, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    text, roles = "", []
    for chunk in client.chat.completions.create(model=args.name, messages=msgs, max_tokens=10, temperature=0, stream=True):
        if chunk.choices:
            d = chunk.choices[0].delta
            roles.append(d.role)
            text += d.content or ""
    assert roles[0] == "assistant" and all(x is None for x in roles[1:]), roles
    assert text == r.choices[0].message.content


args_prompt = prompt(20)


@check("stop strings end the text before the stop string")
def _():
    full = client.completions.create(model=args.name, prompt=args_prompt, max_tokens=30, temperature=0).choices[0].text
    cut = next((i for i in range(3, len(full) - 2) if full[i:i + 2].isprintable() and "\ufffd" not in full[i:i + 2]), None)
    assert cut is not None, f"no printable pair in {full!r}"
    stop = full[cut:cut + 2]
    first = full.index(stop)
    r = client.completions.create(model=args.name, prompt=args_prompt, max_tokens=30, temperature=0, stop=[stop, "\x00never"])
    assert r.choices[0].text == full[:first] and r.choices[0].finish_reason == "stop", (r.choices[0].text, full[:first])
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=args.name, prompt=args_prompt, max_tokens=30, temperature=0, stop=stop, stream=True) if c.choices)
    assert streamed == full[:first], (streamed, full[:first])
    ids, _ = served_ids(args_prompt, 10)
    t = client.completions.create(model=args.name, prompt=args_prompt, max_tokens=10, temperature=0,
                                  extra_body={"stop_token_ids": [ids[3]]})
    assert t.choices[0].finish_reason == "stop" and t.usage.completion_tokens == ids.index(ids[3]) + 1


@check("n choices, seeded sampling reproducible, logprobs top-k")
def _():
    kw = dict(model=args.name, prompt="Seed", max_tokens=16, temperature=1.0, top_p=0.9, seed=42, n=3)
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2], a.choices
    assert [c.text for c in a.choices] == [c.text for c in b.choices], (a.choices, b.choices)
    assert len({c.text for c in a.choices}) > 1, a.choices
    assert a.usage.completion_tokens == 48, a.usage
    # Byte tokens >= 128 all read as U+FFFD, so name top-k entries by id (vLLM's return_tokens_as_token_ids).
    lp = client.completions.create(model=args.name, prompt="Log", max_tokens=4, temperature=0, logprobs=3,
                                   extra_body={"return_tokens_as_token_ids": True}).choices[0].logprobs
    assert len(lp.tokens) == 4 and all(x <= 0 for x in lp.token_logprobs), lp
    assert all(len(t) == 3 and max(t.values()) == x for t, x in zip(lp.top_logprobs, lp.token_logprobs)), lp
    c = client.chat.completions.create(model=args.name, messages=[{"role": "user", "content": "x"}], max_tokens=3, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == 3 and all(len(e.top_logprobs) == 2 for e in content), content


@check("a repeated prompt hits the prefix cache with identical output; another cache_salt does not")
def _():
    pr = prompt(100)
    before = metrics()
    a = client.completions.create(model=args.name, prompt=pr, max_tokens=8, temperature=0, extra_body={"cache_salt": "t1"})
    mid = metrics()
    b = client.completions.create(model=args.name, prompt=pr, max_tokens=8, temperature=0, extra_body={"cache_salt": "t1"})
    after = metrics()
    c = client.completions.create(model=args.name, prompt=pr, max_tokens=8, temperature=0, extra_body={"cache_salt": "t2"})
    last = metrics()
    hits = "vllm:prefix_cache_hits_total"
    assert mid[hits] == before[hits], (before[hits], mid[hits])
    assert after[hits] - mid[hits] >= 96, (mid[hits], after[hits])
    assert last[hits] == after[hits], (after[hits], last[hits])
    assert a.choices[0].text == b.choices[0].text == c.choices[0].text


def status_of(body, path="/v1/completions", raw=None, hdrs=None):
    h = dict(headers if hdrs is None else hdrs)
    if raw is not None:
        h["Content-Type"] = "application/json"
        r = httpx.post(args.base + path, headers=h, content=raw)
    else:
        r = httpx.post(args.base + path, headers=h, json=body)
    err = r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
    return r.status_code, err, r


@check("errors: 400 malformed JSON, wrong types, bad values, vocabulary, context; 404; 401; 413")
def _():
    cases = [
        (None, b'{"prompt": "x", ', 400),
        ({"prompt": "x", "max_tokens": "5"}, None, 400),
        ({"prompt": "x", "max_tokens": -3}, None, 400),
        ({"prompt": "x", "temperature": "hot"}, None, 400),
        ({"prompt": "x", "top_p": 0}, None, 400),
        ({"prompt": "x", "n": 0}, None, 400),
        ({"prompt": "x", "stream": "yes"}, None, 400),
        ({"prompt": [1, 2, 100000]}, None, 400),
        ({"prompt": [1, -2]}, None, 400),
        ({"prompt": [65] * (args.max_len + 5), "max_tokens": 1}, None, 400),
        ({"prompt": "x", "max_tokens": args.max_len}, None, 400),
        ({"prompt": "x", "model": "no-such-model"}, None, 404),
        ({}, None, 400),
    ]
    for body, raw, want in cases:
        code, err, r = status_of(body, raw=raw)
        assert code == want and err.get("code") == want and err.get("message") and err.get("type"), (body, raw, code, r.text)
    code, err, _ = status_of({"prompt": [65] * (args.max_len + 5), "max_tokens": 1})
    assert "maximum context length" in err["message"], err
    code, err, _ = status_of({"messages": "hi"}, path="/v1/chat/completions")
    assert code == 400 and err["param"] == "messages", err
    code, err, _ = status_of({"prompt": "x"}, hdrs={"Authorization": "Bearer wrong"})
    assert code == 401 and err["type"] == "AuthenticationError", (code, err)
    code, err, _ = status_of({"prompt": "x" * (2 << 20)})
    assert code == 413, code
    try:
        client.completions.create(model=args.name, prompt="x", max_tokens=-1)
        raise AssertionError("negative max_tokens accepted")
    except openai.BadRequestError:
        pass
    # The server keeps serving.
    assert client.completions.create(model=args.name, prompt="ok", max_tokens=2).usage.completion_tokens == 2


@check("429 with Retry-After when the queue is full")
def _():
    if not args.busy_base:
        raise AssertionError("no --busy-base server given")
    r = httpx.post(args.busy_base + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 429 and r.headers.get("retry-after") and r.json()["error"]["code"] == 429, (r.status_code, r.headers, r.text)


@check("tokenize / detokenize / version / health")
def _():
    t = httpx.post(args.base + "/tokenize", json={"prompt": "héllo"}).json()
    assert t["count"] == len("héllo".encode()) and t["max_model_len"] == args.max_len
    d = httpx.post(args.base + "/detokenize", json={"tokens": t["tokens"]}).json()
    assert d["prompt"] == "héllo"
    assert "version" in httpx.get(args.base + "/version").json()
    h = httpx.get(args.base + "/health")
    assert h.status_code == 200 and h.content == b""


@check("a client that disconnects mid-stream frees its blocks")
def _():
    before = metrics()
    with httpx.stream("POST", args.base + "/v1/completions", headers=headers, timeout=30,
                      json={"prompt": prompt(50), "max_tokens": args.max_len - 60, "stream": True, "ignore_eos": True}) as r:
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data:"):
                got += 1
            if got == 3:
                break
    deadline = time.time() + 10
    while time.time() < deadline:
        m = metrics()
        if m["vllm:kv_cache_usage_perc"] == 0 and m["vllm:num_requests_running"] == 0:
            break
        time.sleep(0.05)
    assert m["vllm:kv_cache_usage_perc"] == 0 and m["vllm:num_requests_running"] == 0, m
    aborted = m["vllm:request_success_total{finished_reason=abort}"] - before["vllm:request_success_total{finished_reason=abort}"]
    assert aborted == 1, aborted


@check("/metrics parses and carries vLLM's names")
def _():
    m = metrics()
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:num_preemptions_total", "vllm:request_success_total{finished_reason=stop}",
                 "vllm:time_to_first_token_seconds_count", "vllm:inter_token_latency_seconds_count",
                 "vllm:e2e_request_latency_seconds_count", "vllm:request_queue_time_seconds_count"]:
        assert name in m, name
    assert m["vllm:generation_tokens_total"] > 0 and m["vllm:time_to_first_token_seconds_count"] > 0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


@check("64 concurrent clients for a bounded time: every request answered, memory bounded")
def _():
    stop_at = time.time() + 8
    counts, errors = [0] * 64, []
    rss0 = rss_kib(args.pid)

    def worker(i):
        local = random.Random(i)
        while time.time() < stop_at:
            try:
                n = local.randint(1, 24)
                if local.random() < 0.5:
                    r = client.completions.create(model=args.name, prompt=[local.randrange(256) for _ in range(local.randint(1, 200))],
                                                  max_tokens=n, temperature=0.7, extra_body={"ignore_eos": True})
                    assert r.usage.completion_tokens == n, r.usage
                else:
                    got = 0
                    for c in client.completions.create(model=args.name, prompt="stream", max_tokens=n, stream=True,
                                                       stream_options={"include_usage": True}, extra_body={"ignore_eos": True}):
                        if not c.choices:
                            got = c.usage.completion_tokens
                    assert got == n, (got, n)
                counts[i] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert all(c > 0 for c in counts), counts
    rss1 = rss_kib(args.pid)
    print(f"     {sum(counts)} requests by 64 clients in 8 s; server RSS {rss0 // 1024} -> {rss1 // 1024} MiB")
    assert rss1 < rss0 + 512 * 1024, (rss0, rss1)
    assert client.completions.create(model=args.name, prompt="alive", max_tokens=1).usage.completion_tokens == 1


def completion_json(body):
    r = httpx.post(args.base + "/v1/completions", headers=headers, json={"model": args.name, **body}, timeout=60)
    return r.status_code, r.json()


def token_ids(j):
    return [int(t.split(":")[1]) for t in j["choices"][0]["logprobs"]["tokens"]]


@check("documents: the first request stores its chunks, a reordered one reuses them; full recompute equals plain prefill")
def _():
    docs = ["Doc: " + "".join(chr(rng.randrange(97, 123)) for _ in range(40 + 9 * i)) + "\n" for i in range(3)]
    q = "Q: which one?\nA:"
    common = {"max_tokens": 6, "temperature": 0, "ignore_eos": True, "logprobs": 1, "return_tokens_as_token_ids": True}
    status, first = completion_json({"prompt": q, "documents": docs, **common})
    assert status == 200, first
    assert first["usage"]["reuse"]["chunks"] == 3 and first["usage"]["reuse"]["chunk_hits"] == 0, first["usage"]
    order = [docs[2], docs[0], docs[1]]
    status, again = completion_json({"prompt": q, "documents": order, "reuse_policy": "full", **common})
    assert status == 200, again
    u = again["usage"]
    assert u["reuse"]["chunk_hits"] == 3 and u["reuse"]["reused_tokens"] == sum(len(d) for d in docs), u
    assert u["prompt_tokens"] == sum(len(d) for d in docs) + len(q), u
    status, plain = completion_json({"prompt": "".join(order) + q, **common})
    assert status == 200, plain
    assert token_ids(again) == token_ids(plain), (token_ids(again), token_ids(plain))
    status, blended = completion_json({"prompt": q, "documents": order, "reuse_policy": "unchanged", **common})
    assert status == 200 and blended["usage"]["reuse"]["recomputed_tokens"] == len(q), blended["usage"]
    assert blended["usage"]["prompt_tokens_details"]["cached_tokens"] == sum(len(d) for d in docs), blended["usage"]
    # Cache-Craft's share is set by reuse_alpha: none at 0, some at 100.
    recomputed = []
    for policy, alpha in (("cachecraft", 0), ("cachecraft", 100), ("epic+cachecraft", 0)):
        status, j = completion_json({"prompt": q, "documents": order, "reuse_policy": policy, "reuse_alpha": alpha, **common})
        assert status == 200, j
        recomputed.append(j["usage"]["reuse"]["recomputed_tokens"])
    # epic+: also the first 16 tokens of each of the 3 documents (all longer than 16).
    assert recomputed[0] == len(q) < recomputed[1] and recomputed[2] == len(q) + 3 * 16, recomputed
    # The openai client passes documents as an extra field.
    r = client.completions.create(model=args.name, prompt=q, max_tokens=3, temperature=0, extra_body={"documents": docs})
    assert r.usage.prompt_tokens == sum(len(d) for d in docs) + len(q), r.usage
    m = metrics()
    assert m.get("torus:chunk_hits_total", 0) >= 6 and m.get("torus:chunk_queries_total", 0) >= 12, m
    assert m.get("torus:chunk_store_bytes{tier=disk}", 0) > 0 and m.get("torus:chunk_store_entries{tier=memory}", 0) >= 3, m


@check("a chunk separator in the prompt names the chunks; empty parts are a 400")
def _():
    sep = "<|chunk|>"
    a, b, q = "Doc: alpha beta gamma.\n", "Doc: delta epsilon.\n", "Q: which?\nA:"
    status, j = completion_json({"prompt": a + sep + b + sep + q, "max_tokens": 2, "temperature": 0})
    assert status == 200, j
    assert j["usage"]["reuse"]["chunks"] == 2 and j["usage"]["prompt_tokens"] == len(a + b + q), j["usage"]
    status, j = completion_json({"prompt": b + sep + a + sep + q, "max_tokens": 2, "temperature": 0})
    assert status == 200 and j["usage"]["reuse"]["chunk_hits"] == 2, j
    for prompt, needle in [(a + sep + sep + q, "chunk 1 before separator 2"), (a + sep, "nothing follows the last separator")]:
        status, j = completion_json({"prompt": prompt, "max_tokens": 2})
        assert status == 400 and needle in j["error"]["message"], (prompt, status, j)


@check("documents: bad input is a 400 naming the field or the total")
def _():
    for body, needle in [({"documents": [""]}, "documents[0]"), ({"documents": "text"}, "documents"),
                         ({"documents": ["a", 3]}, "documents[1]"), ({"reuse_policy": "magic"}, "reuse_policy"),
                         ({"reuse_ratio": 2}, "reuse_ratio"),
                         ({"reuse_policy": "cachecraft", "reuse_ratio": 0.2}, "reuse_alpha"),
                         ({"reuse_policy": "cacheblend", "reuse_alpha": 0.5}, "cachecraft only"),
                         ({"reuse_policy": "cachecraft", "reuse_alpha": -1}, "reuse_alpha must be 0 or more"),
                         ({"reuse_policy": "epic+full"}, "epic+cachecraft"),
                         ({"documents": ["x" * (args.max_len // 2), "y" * (args.max_len // 2)]}, str(args.max_len + 2 + 4))]:
        status, j = completion_json({"prompt": "Q:", "max_tokens": 4, **body})
        assert status == 400 and needle in j["error"]["message"], (body, status, j)


@check("SIGTERM: an open stream ends with [DONE] and the server exits within the grace bound")
def _():
    with httpx.stream("POST", args.base + "/v1/completions", headers=headers, timeout=30,
                      json={"prompt": "long", "max_tokens": args.max_len - 10, "stream": True, "ignore_eos": True}) as r:
        lines = r.iter_lines()
        next(lines)
        os.kill(args.pid, signal.SIGTERM)
        last = [line for line in lines if line][-1]
    assert last == "data: [DONE]", last
    deadline = time.time() + 15
    while time.time() < deadline and os.path.exists(f"/proc/{args.pid}"):
        try:
            with open(f"/proc/{args.pid}/status") as f:
                if "zombie" in f.read():
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    with open(f"/proc/{args.pid}/status") if os.path.exists(f"/proc/{args.pid}/status") else open(os.devnull) as f:
        state = f.read()
    assert state == "" or "zombie" in state, "the server is still running 15 s after SIGTERM"


run_checks()
failed = [n for n, e in results if e is not None]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
