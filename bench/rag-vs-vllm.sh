#!/usr/bin/env bash
# The same RAG trace served four ways (issue #10): torus serve with chunk reuse (documents as
# a field), torus serve with prefix caching only, torus serve with full prefill (prefix caching
# off) and vLLM's CPU build with its prefix caching (documents inline in the prompt). Same model
# directory, same requests, one at a time. OPENBLAS_NUM_THREADS applies to torus serve.
# Usage: bench/rag-vs-vllm.sh MODEL_DIR [REQUESTS]   (vLLM: VLLM_TARGET_DEVICE=cpu, venv as in ../shared/peers/vllm-cpu.sh)
#   POLICY=cachecraft RATIO=0.15 (the reuse policy and its ratio, or alpha for cachecraft), DOCUMENTS=6-7 DOCUMENT_BYTES=1000-1200 (chunks of 200-250 tokens;
#   the defaults are the corpus's 6-10 documents of 150-349 bytes), VLLM_PORT=P (a running vLLM server of the same model)
set -eu
cd "$(dirname "$0")/.."
R=.build/release/torus
MODEL=${1:?model directory}; N=${2:-48}
NAME=$(basename "$MODEL")
OUT=runs/bench-rag; mkdir -p $OUT
$R bench rag --model "$MODEL" --requests $N --methods none --save-trace $OUT/trace \
  --documents ${DOCUMENTS:-6-10} --document-bytes ${DOCUMENT_BYTES:-150-349}
run() {  # label port dataset [served model name]
  $R bench serve --base http://127.0.0.1:$2 --model "${4:-$NAME}" --dataset "$3" --num-prompts $N --max-concurrency 1 \
    --label "$1" --json-out $OUT/serve-$1.json 2>/dev/null \
    | grep -E "Serving Benchmark|Successful|Output token|Request throughput|Mean TTFT|Median TTFT|P99 TTFT|Median TPOT"
}
serve() {  # port, extra flags...
  local port=$1; shift
  $R serve --model "$MODEL" --served-model-name "$NAME" --port $port "$@" > $OUT/serve-$port.log 2>&1 &
  for _ in $(seq 1 60); do curl -sf http://127.0.0.1:$port/health >/dev/null && return; sleep 1; done
  echo "torus serve on $port did not start"; cat $OUT/serve-$port.log; exit 1
}
POLICY=${POLICY:-cacheblend}
case $POLICY in *cachecraft) KNOB=--reuse-alpha ;; *) KNOB=--reuse-ratio ;; esac
serve 8110 --chunk-reuse $POLICY $KNOB ${RATIO:-0.15}
run torus-reuse 8110 $OUT/trace-documents.jsonl
curl -s http://127.0.0.1:8110/metrics | grep -E "^torus:chunk_(hits|queries|reused|recomputed)" || true
kill %1; wait %1 2>/dev/null || true
serve 8111
run torus-prefix 8111 $OUT/trace-inline.jsonl
curl -s http://127.0.0.1:8111/metrics | grep -E "^vllm:prefix_cache_(hits|queries)" || true
kill %1; wait %1 2>/dev/null || true
serve 8112 --no-enable-prefix-caching
run torus-full 8112 $OUT/trace-inline.jsonl
kill %1; wait %1 2>/dev/null || true
if [ -n "${VLLM_PORT:-}" ]; then
  VNAME=$(curl -s http://127.0.0.1:$VLLM_PORT/v1/models | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])')
  run vllm-prefix $VLLM_PORT $OUT/trace-inline.jsonl "$VNAME"
fi
