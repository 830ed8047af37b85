#!/usr/bin/env bash
# Fuzzes coproc's codec with libFuzzer (clang++, ASan + UBSan), outside the main CMake project
# (which builds with g++).
#   tests/fuzz/run_fuzz.sh [SECONDS]            build, then fuzz for SECONDS (default 60) over a
#                                               copy of tests/fuzz/corpus; non-zero on a finding
#   tests/fuzz/run_fuzz.sh --write-corpus [DIR] regenerate the seeds (default tests/fuzz/corpus)
# Findings are written to build/fuzz/artifacts/; replay one with build/fuzz/codec_fuzz FILE.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=build/fuzz
sources=(tests/fuzz/codec_fuzz.cpp src/codec.cpp src/error.cpp src/exit_status.cpp)
common=(-std=c++20 -O1 -g -Iinclude)
mkdir -p "$out"

if [ "${1:-}" = "--write-corpus" ]; then
  dir=${2:-tests/fuzz/corpus}
  "${CXX:-g++}" "${common[@]}" -DCODEC_FUZZ_WRITE_CORPUS "${sources[@]}" -o "$out/codec_fuzz_corpus"
  rm -rf "$dir"
  "$out/codec_fuzz_corpus" --write-corpus "$dir"
  exit 0
fi

seconds=${1:-60}
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS] | --write-corpus [DIR]" >&2; exit 2 ;;
esac

# Rebuild when a source or header is newer than the fuzzer.
binary=$out/codec_fuzz
newer=$([ -x "$binary" ] && find "${sources[@]}" include/coproc tests/fuzz/run_fuzz.sh \
  -newer "$binary" -print -quit || echo missing)
if [ -n "$newer" ]; then
  echo "fuzz: building $binary"
  clang++ "${common[@]}" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -fno-omit-frame-pointer "${sources[@]}" -o "$binary"
fi

# Fuzz a copy: what the fuzzer adds to its corpus stays out of the source tree.
work=$out/corpus
rm -rf "$work" "$out/artifacts"
mkdir -p "$work" "$out/artifacts"
cp tests/fuzz/corpus/* "$work"/

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
echo "fuzz: running codec_fuzz for ${seconds} s"
status=0
"$binary" -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 -malloc_limit_mb=512 \
  -timeout=10 -print_final_stats=1 -artifact_prefix="$out/artifacts/" "$work" || status=$?
if [ "$status" -ne 0 ] || [ -n "$(ls -A "$out/artifacts")" ]; then
  echo "fuzz: FAILED (exit $status); reproducers in $out/artifacts/:" >&2
  ls -l "$out/artifacts" >&2
  exit 1
fi
echo "fuzz: no findings"
