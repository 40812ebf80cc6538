#!/usr/bin/env bash
# torus serve against vLLM's CPU build on the same model and request sets (issue #9's table).
# Each server runs alone (an idle vLLM keeps cores busy and slows a server beside it), with the
# same dtype and the same seeds:
#   DTYPE=bfloat16 SEED_BASE=1100 bench/serve-vs-vllm.sh        (DTYPE: float32 (default) or bfloat16)
# Torus's KV cache is fp32 unless KV_DTYPE=bfloat16 (vLLM's default keeps it in the model dtype).
# Both get the config's max_num_batched_tokens (vLLM's CPU default is 2048; at 512 it also did better
# here: c=32 851 against 772 output tok/s, TTFT median 191 against 249 ms). Extra vLLM flags: VLLM_ARGS.
# Writes runs/serve-bench (torus init) when missing, and JSON results to runs/bench/.
set -u
cd "$(dirname "$0")/.."
R=.build/release/torus
DTYPE=${DTYPE:-float32}
PEER=${VLLM_PEER:-../shared/peers/vllm-cpu.sh}
mkdir -p runs/bench
[ -f runs/serve-bench/config.json ] || $R init --config configs/serve-bench.yaml --out runs/serve-bench
load() {  # name port
  for spec in "1 8" "8 32" "32 64"; do
    set -- $1 $2 $spec; c=$3; n=$4
    $R bench serve --base http://127.0.0.1:$2 --model serve-bench --num-prompts $n --input-len 256 --output-len 64 \
      --range-ratio 0.5 --max-concurrency $c --seed $((${SEED_BASE:-200} + c)) --label "$1 $DTYPE c=$c" --json-out runs/bench/$1-$DTYPE-c$c.json 2>/dev/null \
      | grep -E "Serving Benchmark|Successful|Failed|Output token|Request throughput|Median TTFT|P99 TTFT|Median TPOT|Median ITL"
  done
}
budget=$(awk '/^ *max_num_batched_tokens:/ {print $2}' configs/serve-bench.yaml)
port=${TORUS_PORT:-8100}
$R serve --config configs/serve-bench.yaml --port $port --dtype $DTYPE --kv-cache-dtype ${KV_DTYPE:-float32} > runs/bench/torus-serve.log 2>&1 &
torus=$!
for _ in $(seq 1 60); do curl -sf http://127.0.0.1:$port/health >/dev/null 2>&1 && break; sleep 1; done
load torus $port
kill $torus; wait $torus 2>/dev/null
port=${VLLM_PORT:-8200}
vllm=$(VLLM_TARGET_DEVICE=cpu $PEER start "$PWD/runs/serve-bench" $port --served-model-name serve-bench --max-model-len 4096 --dtype $DTYPE \
  --max-num-batched-tokens $budget ${VLLM_ARGS:-}) || exit 1
load vllm $port
kill $vllm
