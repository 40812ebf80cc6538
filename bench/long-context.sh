#!/usr/bin/env bash
# One 128K-token prompt through the HTTP API: 4 sequence-parallel ranks, then one rank.
set -u
cd "$(dirname "$0")/.."
mkdir -p runs/long
R=.build/release/torus
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[ -d runs/long-context ] || $R init --config configs/long-context.yaml --out runs/long-context
python3 -c "
import json, random
r = random.Random(5)
words = ['alpha','beta','gamma','delta','omega','river','stone','cloud','Galto','Queren']
text = ''
while len(text) < 131008: text += r.choice(words) + ' '
text = text[:131008]
open('runs/long/prompt.jsonl','w').write(json.dumps({'prompt': text, 'output_tokens': 8}) + '\n')
"
peak() { for p in "$@"; do grep VmHWM /proc/$p/status | awk -v p=$p '{printf "pid %s peak RSS %.0f MiB\n", p, $2/1024}'; done; }
run() {
  label=$1; shift
  "$@" > runs/long/$label.log 2>&1 &
  for i in $(seq 1 120); do grep -q "listening on" runs/long/$label.log && break; sleep 1; done
  pids=$(pgrep -f "torus serve --config configs/long-context.yaml" | tr '\n' ' ')
  echo "== $label (ranks: $pids)"
  /usr/bin/time -f "%e s" $R bench serve --base http://127.0.0.1:8400 --model long --dataset runs/long/prompt.jsonl --num-prompts 1 \
    --label "$label" 2>&1 | grep -E "Benchmark Result|Successful|Failed|First failure|Total input|TTFT|E2EL|[0-9] s$"
  peak $pids
  curl -s localhost:8400/metrics | grep -E "^vllm:(prompt_tokens_total|kv_cache_usage_perc)"
  pkill -TERM -f "torus serve --config configs/long-context.yaml"; sleep 3
}
run sp4 mpirun --oversubscribe --bind-to none -np 4 -x OPENBLAS_NUM_THREADS=1 $R serve --config configs/long-context.yaml
run one $R serve --config configs/long-context.yaml --kv-cache-memory-mb 1024
