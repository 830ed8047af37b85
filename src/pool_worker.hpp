// The worker side of a process pool: the loop a worker process runs, and the frames it
// exchanges with the pool (see docs/design.md, "Process pool").
#pragma once

#include <coproc/codec.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace coproc::detail {

// Frame tags between a pool and its workers (value tags are hashes, never below 16).
inline constexpr std::uint32_t pool_config_tag = 7;  // pool -> spawned worker: worker_config
inline constexpr std::uint32_t retire_tag = 8;       // worker -> pool: u64 last seq it ran
inline constexpr std::uint32_t init_failed_tag = 9;  // worker -> pool: encoded exception
inline constexpr std::uint32_t ready_tag = 10;       // worker -> pool: initializer done

// Bytes before a task frame's body: size, tag, sequence number.
inline constexpr std::size_t task_header = 16;
// Bytes before a result's payload: size, tag, sequence number, run time in ns.
inline constexpr std::size_t result_header = 24;

struct worker_config {
  std::string name;
  std::uint64_t max_tasks = 0;   // 0: no limit
  std::uint64_t max_memory = 0;  // bytes of RSS; 0: no limit
  std::int64_t max_age_ns = 0;   // 0: no limit
  bool flush_each = false;       // send each result before starting the next task
  std::uint64_t max_message = 0xffffffffu;
  std::string initializer;  // spawn start: an encoded call_request; empty: none

  template <typename Archive>
  void serialize(Archive& ar) {
    ar(name, max_tasks, max_memory, max_age_ns, flush_each, max_message, initializer);
  }
};

// What a worker publishes for the pool in shared memory: the sequence number of the task it
// started last and of the one it finished last. Written with plain atomic stores; read by the
// pool after the worker died, to tell the task it was running from those it had not started.
struct worker_progress {
  std::uint64_t started;
  std::uint64_t finished;
};

// Runs tasks from `fd` until the pool closes it or the worker retires; never returns.
// `init` runs first (fork start); a throwing initializer is reported as init_failed_tag.
[[noreturn]] void run_pool_worker(int fd, worker_progress* progress, const worker_config& cfg,
                                  const std::function<void()>& init);

// A spawned worker that received pool_config_tag: maps descriptor 4 (the progress page), runs
// the registered initializer and the loop.
[[noreturn]] void run_spawned_pool_worker(int fd, std::string_view config);

}  // namespace coproc::detail
