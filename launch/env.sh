# Shared set-up for launch/ scripts: installs missing system packages (Debian, as root) and
# exports the runtime environment. Source it; do not run it.

torus_ensure_packages() {
  local need=()
  command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
  pkg-config --exists ompi-c 2>/dev/null || need+=(libopenmpi-dev)
  pkg-config --exists openblas 2>/dev/null || need+=(libopenblas-dev)
  command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
  if [ ${#need[@]} -gt 0 ]; then
    echo "launch: installing ${need[*]}" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libopenmpi-dev openmpi-bin libopenblas-dev pkg-config >/dev/null
  fi
  if ! command -v swift >/dev/null 2>&1; then
    [ -x /opt/swift/usr/bin/swift ] && export PATH="/opt/swift/usr/bin:$PATH"
  fi
  command -v swift >/dev/null 2>&1 || { echo "launch: Swift 6 toolchain not found on PATH" >&2; exit 1; }
}

torus_export_env() {
  # Open MPI refuses to run as root unless told it is intended.
  if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
  # OpenBLAS reads OPENBLAS_CORETYPE when it loads. The launch scripts let torus choose the
  # core (TORUS_BLAS_CORE=auto: SkylakeX kernels on AVX-512 CPUs, else the library's own
  # detection), even over a machine's preset; TORUS_BLAS_CORE=<core> picks one instead.
  # torus re-executes itself to apply it; test bundles need it from the start.
  export TORUS_BLAS_CORE="${TORUS_BLAS_CORE:-auto}"
  if [ "$TORUS_BLAS_CORE" != auto ]; then
    export OPENBLAS_CORETYPE="$TORUS_BLAS_CORE"
  elif grep -q avx512f /proc/cpuinfo 2>/dev/null && grep -q avx512bw /proc/cpuinfo && grep -q avx512vl /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=SkylakeX
  else
    unset OPENBLAS_CORETYPE
  fi
}

# The Python the server tests drive Torus with: the official openai client, prometheus_client
# and tokenizers from PyPI in .venv-test (ignored by git). When PyPI cannot be reached those
# tests skip with a message.
torus_ensure_test_python() {
  local venv=.venv-test
  local check='import openai, prometheus_client, tokenizers'
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then return 0; fi
  command -v python3 >/dev/null 2>&1 || { echo "launch: no python3; the openai client tests will be skipped" >&2; return 0; }
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null 2>&1 || true
  fi
  echo "launch: installing openai, prometheus_client and tokenizers into $venv" >&2
  if ! { python3 -m venv "$venv" && timeout 600 "$venv/bin/pip" install -q openai prometheus_client tokenizers; } >&2; then
    echo "launch: could not install the test Python packages; the openai client tests will be skipped" >&2
  fi
  return 0
}
