#!/usr/bin/env bash
# torus serve against vLLM's CPU build on the same model and request sets (issue #9's table).
# Start both first, e.g.:
#   .build/release/torus init --config configs/serve-bench.yaml --out runs/serve-bench
#   .build/release/torus serve --config configs/serve-bench.yaml --port 8100 &
#   VLLM_TARGET_DEVICE=cpu ../shared/peers/vllm-cpu.sh start $PWD/runs/serve-bench 8200 --served-model-name serve-bench --max-model-len 4096
# Then: SEED_BASE=400 bench/serve-vs-vllm.sh   (use fresh seeds per run: both servers keep their prefix cache)
set -u
cd "$(dirname "$0")/.."
R=.build/release/torus
mkdir -p runs/bench
for spec in "1 8" "8 32" "32 64"; do
  set -- $spec; c=$1; n=$2
  for target in "torus ${TORUS_PORT:-8100}" "vllm ${VLLM_PORT:-8200}"; do
    set -- $target; name=$1; port=$2
    $R bench serve --base http://127.0.0.1:$port --model serve-bench --num-prompts $n --input-len 256 --output-len 64 \
      --range-ratio 0.5 --max-concurrency $c --seed $((${SEED_BASE:-200} + c)) --label "$name c=$c" --json-out runs/bench/$name-c$c.json 2>/dev/null \
      | grep -E "Serving Benchmark|Successful|Failed|Output token|Request throughput|Median TTFT|P99 TTFT|Median TPOT|Median ITL"
  done
done
