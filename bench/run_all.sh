#!/usr/bin/env bash
# Builds the benchmarks with the `bench` preset (Release, build/bench) and runs them all.
# Figures go to stdout as `name: value unit` lines (medians over the runs); build output
# goes to stderr.
#
#   bench/run_all.sh [--runs N] [--quick] [--no-build] [--jobs J]
#                    [--only spawn|read|memory|pipe|call|pool]
#
# --quick shrinks the work (500 spawns, 500 live children, 128 MiB reads, 200 children for
# memory, a tenth of the pipe messages, a fifth of the pool tasks) for a smoke test; its
# figures are noisier and not the ones to report.
set -euo pipefail

runs=5
quick=0
build=1
jobs=2
only=all
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --runs=*) runs="${1#*=}"; shift ;;
    --quick) quick=1; shift ;;
    --no-build) build=0; shift ;;
    --jobs) jobs="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [[ $build -eq 1 ]]; then
  cmake --preset bench >&2
  cmake --build --preset bench -j "$jobs" >&2
fi
bin="$root/build/bench/bench"

spawn_args=() read_args=() memory_args=() pipe_args=() call_args=() pool_args=()
if [[ $quick -eq 1 ]]; then
  spawn_args=(--total 500 --live 500 --live-total 500)
  read_args=(--bytes $((128 << 20)) --python-line-bytes $((32 << 20)))
  memory_args=(--children 200)
  call_args=(--calls 50 --spawn-calls 10)
  pipe_args=(--small 100000 --big 800 --pingpong 20000 --python-small 50000 --python-big 100
             --python-pingpong 10000)
  pool_args=(--tasks 20000 --latency 4000 --warmup 200 --map 200000 --cpu-tasks 8
             --python-tasks 4000 --python-latency 400)
fi

echo "# coproc benchmarks: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(uname -r), runs=$runs (medians)"
ran=0
run() {  # run NAME ARGS...: NAME_bench unless --only names another
  local name="$1"; shift
  [[ $only == all || $only == "$name" ]] || return 0
  ran=1
  echo "# ${name}_bench"
  "$bin/${name}_bench" --runs "$runs" "$@"
}
run spawn "${spawn_args[@]}"
run read "${read_args[@]}"
run memory "${memory_args[@]}"
run pipe "${pipe_args[@]}"
run call "${call_args[@]}"
run pool "${pool_args[@]}"
if [[ $ran -eq 0 ]]; then echo "run_all.sh: --only $only: no such benchmark" >&2; exit 2; fi
