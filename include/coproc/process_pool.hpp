// `process_pool`: Python's concurrent.futures.ProcessPoolExecutor on an Asio event loop. Worker
// processes run submitted functions; `submit` gives a `future`, `map` a `result_stream`.
//
// What crosses to a worker (see docs/pool.md):
// - fork start (default): a function pointer, a captureless lambda or another empty callable
//   type, or a callable object that is itself `encodable` (its state is encoded), with encodable
//   arguments. The worker already holds the code: a forked copy of this program.
// - spawn start: a function registered with `COPROC_REGISTER(fn)`, with encodable arguments;
//   `main` calls `coproc::worker_hook(argc, argv)` first.
// Results and exceptions come back encoded (`codec.hpp`): an exception arrives as its own type.
//
// Faults: a worker that dies (signal, `_exit`, killed from outside, OOM) fails only the task it
// was running, with `worker_died` (errc::worker_died) naming the signal or exit code; tasks queued
// behind it go to other workers, and a replacement worker starts. A task past `task_timeout`
// fails with errc::timed_out and its worker is killed. Every future resolves exactly once.
//
// Threads: the pool runs on the executor it is given; submit, map and the rest may be called
// from any thread. No thread of its own is used unless it is built without an executor.
#pragma once

#include <coproc/codec.hpp>
#include <coproc/config.hpp>
#include <coproc/error.hpp>
#include <coproc/future.hpp>
#include <coproc/pipe.hpp>
#include <coproc/process.hpp>
#include <coproc/result_stream.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc {

/// CPUs this process may run on: its affinity mask, capped by a cgroup (v2 `cpu.max`) quota,
/// rounded up; at least 1.
std::size_t available_cpus();

/// A worker dies while it runs a task: what the task's future fails with.
class worker_died : public boost::system::system_error {
 public:
  worker_died(std::string pool, int pid, exit_status status);
  const char* what() const noexcept override { return message_.c_str(); }
  int pid() const noexcept { return pid_; }
  exit_status status() const noexcept { return status_; }

 private:
  std::string message_;
  int pid_;
  exit_status status_;
};

/// Runs once in each worker before its first task: `worker_initializer(fn, args...)`. With the
/// fork start method any callable works; with spawn, a function registered with
/// `COPROC_REGISTER` and encodable arguments. An initializer that throws (or kills its worker)
/// breaks the pool: queued and later tasks fail with errc::pool_broken, naming the exception.
class worker_initializer {
 public:
  worker_initializer() = default;
  template <typename F, typename... Args>
  requires(std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>)
      worker_initializer(F&& fn, Args&&... args) {
    using Fn = std::decay_t<F>;
    auto call = std::make_shared<std::pair<Fn, std::tuple<std::decay_t<Args>...>>>(
        std::forward<F>(fn), std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...));
    run_ = [call] { std::apply(call->first, call->second); };
    std::string why;
    spawn_request_ = detail::spawn_request(call->first, call->second, "initializer", false, why);
    why_not_spawnable_ = why;
  }
  explicit operator bool() const noexcept { return static_cast<bool>(run_); }

  // For the pool.
  const std::function<void()>& run() const noexcept { return run_; }
  const std::string& spawn_request() const noexcept { return spawn_request_; }
  const std::string& why_not_spawnable() const noexcept { return why_not_spawnable_; }

 private:
  std::function<void()> run_;
  std::string spawn_request_;
  std::string why_not_spawnable_;
};

/// Settings of a `process_pool`; every field has a sensible default.
struct pool_options {
  /// Worker processes; 0: `available_cpus()`.
  std::size_t workers = 0;
  start_method method = start_method::fork;
  /// Runs in each worker before its first task.
  worker_initializer initializer{};
  /// A worker that has run this many tasks is replaced by a fresh one.
  std::optional<std::size_t> max_tasks_per_child{};
  /// A worker whose resident memory exceeds this (bytes, checked between tasks) is replaced.
  std::optional<std::size_t> max_worker_memory{};
  /// A worker older than this is replaced (checked between tasks).
  std::optional<std::chrono::milliseconds> max_worker_age{};
  /// A task running longer fails with errc::timed_out, and its worker is killed and replaced.
  std::optional<std::chrono::milliseconds> task_timeout{};
  /// Times a task is resubmitted when its worker dies under it (0: it fails at once).
  unsigned max_retries = 0;
  /// Tasks sent ahead to each worker beyond the one it runs (0: none, so a task waits for
  /// a free worker and stays cancellable until then). Unset: adapts to the measured task time
  /// (1 for slow tasks, up to 63 for tasks of a few microseconds).
  std::optional<std::size_t> prefetch{};
  /// The largest argument or result message (bytes of its encoding).
  std::size_t max_message_size = 0xffffffffu;
  /// Names the workers ("NAME-1", ...; `ps -o comm`) and appears in errors.
  std::string name = "pool";
};

/// Counters of a pool, read together.
struct pool_stats {
  std::uint64_t submitted = 0;  ///< tasks accepted
  std::uint64_t queued = 0;     ///< not yet sent to a worker
  std::uint64_t running = 0;    ///< sent to a worker, not finished
  std::uint64_t done = 0;       ///< finished with a value
  std::uint64_t failed = 0;     ///< finished with an exception (timeouts, worker deaths included)
  std::uint64_t cancelled = 0;  ///< cancelled before they ran
  std::uint64_t worker_restarts = 0;  ///< replacements started after deaths and recycling
  std::size_t workers = 0;            ///< live workers
};

namespace detail {

class pool_core;
struct event_thread;

// A task as the non-template engine sees it.
struct pool_task {
  std::uint64_t seq = 0;
  std::string frame;  // header, 8 bytes for the sequence number, body
  std::shared_ptr<future_state_base> state;
  void (*resolve)(future_state_base& s, std::uint32_t tag, std::string_view payload) = nullptr;
  unsigned retries_left = 0;
};

inline constexpr std::uint32_t task_tag = 6;

template <typename F>
inline constexpr bool is_function_pointer_v =
    std::is_pointer_v<F>&& std::is_function_v<std::remove_pointer_t<F>>;

// A callable that can cross to a forked worker, and how.
template <typename F>
concept task_callable =
    is_function_pointer_v<F> ||(std::is_empty_v<F>&& std::default_initializable<F>) || encodable<F>;

// The worker-side entry of a fork-start task: `in` is [mode][callable state][arguments].
template <typename F, typename ArgsTuple>
std::uint32_t fork_invoke(std::string_view in, std::string& out) {
  const auto mode = static_cast<std::uint8_t>(in[0]);
  in.remove_prefix(1);
  if constexpr (is_function_pointer_v<F>) {
    F f;
    std::memcpy(&f, in.data(), sizeof f);
    in.remove_prefix(sizeof f);
    return run_task<F, ArgsTuple>(f, mode, in, out);
  } else if constexpr (std::is_empty_v<F> && std::default_initializable<F>) {
    F f{};
    return run_task<F, ArgsTuple>(f, mode, in, out);
  } else {
    std::uint32_t n;
    std::memcpy(&n, in.data(), 4);
    F f = decode<F>(in.substr(4, n));
    in.remove_prefix(4 + n);
    return run_task<F, ArgsTuple>(f, mode, in, out);
  }
}

// Parent side: resolves a future from a result frame.
template <typename R>
void resolve_task(future_state_base& base, std::uint32_t tag, std::string_view payload) {
  auto& s = static_cast<future_state<R>&>(base);
  try {
    if (tag == exception_tag) {
      s.set_exception(decode_exception(decode<std::string>(payload)));
    } else if (tag != result_tag<R>()) {
      throw boost::system::system_error(make_error_code(errc::type_mismatch), "pool result");
    } else if constexpr (std::is_void_v<R>) {
      s.set_value();
    } else {
      R r{};
      decode_into(payload, r);
      s.set_value(std::move(r));
    }
  } catch (...) {
    s.set_exception(std::current_exception());
  }
}

// The frame of a task, less its sequence number (filled in by the engine).
std::string task_frame_start(std::uint64_t invoker, std::string_view function_name,
                             std::uint8_t mode);
void finish_task_frame(std::string& frame);

// Pool engine entry points (src/process_pool.cpp).
std::shared_ptr<pool_core> make_pool_core(executor_type ex, pool_options opts);
void pool_submit(pool_core& core, pool_task task);
// Throws std::logic_error naming the pool and `what` once the pool is shut down.
void pool_check_open(const pool_core& core, const char* what);
start_method pool_method(const pool_core& core);
executor_type pool_executor(const pool_core& core);
std::size_t pool_workers(const pool_core& core);
unsigned pool_retries(const pool_core& core);
void pool_shutdown(const std::shared_ptr<pool_core>& core, bool wait, bool cancel_futures);
void pool_async_shutdown(const std::shared_ptr<pool_core>& core, bool cancel_futures,
                         asio::any_completion_handler<void()> h);
void pool_signal_workers(const std::shared_ptr<pool_core>& core, int sig);
pool_stats pool_get_stats(const pool_core& core);
std::vector<int> pool_worker_pids(const pool_core& core);

}  // namespace detail

/// A pool of worker processes. See the top of this header.
///
/// Destruction: with its own event loop thread (built without an executor), the destructor is
/// `shutdown(true)` (Python's `with` block); on a caller's executor it is `shutdown(false)`:
/// queued and running tasks still finish and resolve their futures, then the workers exit and
/// are reaped, as long as the executor runs. A pool whose io_context is destroyed first fails
/// the futures still open with errc::shut_down and kills its workers.
class process_pool {
 public:
  using executor_type = coproc::executor_type;

  /// A pool whose I/O runs on `ex`. Starts the workers now; throws `spawn_error` when one
  /// cannot be started and `std::invalid_argument` for options that cannot work (a spawn-start
  /// initializer that is not registered). Workers are tied to this process with
  /// PR_SET_PDEATHSIG, which Linux ties to the forking thread: construct the pool on a thread
  /// that lives as long as it (a worker lost otherwise is replaced, failing its task).
  explicit process_pool(const executor_type& ex, pool_options options = {});
  /// A pool with its own event loop thread, for blocking use (`submit(...).get()`). Its
  /// workers are forked on that thread.
  explicit process_pool(pool_options options = {});
  process_pool(process_pool&&) noexcept = default;
  process_pool& operator=(process_pool&&) noexcept;
  ~process_pool();

  executor_type get_executor() const { return detail::pool_executor(*core_); }
  /// The number of workers the pool keeps.
  std::size_t size() const { return detail::pool_workers(*core_); }

  /// Queues `fn(args...)` for a worker and gives its future (running once a worker takes it;
  /// `cancel()` works until then). Throws `std::logic_error` after `shutdown`,
  /// `std::invalid_argument` when the spawn start method cannot run `fn` (not registered).
  /// `fn` must satisfy `detail::task_callable` (fork start) and the arguments and result must
  /// be encodable; violations are compile-time errors.
  template <typename F, typename... Args>
  requires(std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>) auto submit(F&& fn,
                                                                                 Args&&... args)
      -> future<std::decay_t<std::invoke_result_t<std::decay_t<F>&, std::decay_t<Args>&...>>> {
    using Fn = std::decay_t<F>;
    using ArgsTuple = std::tuple<std::decay_t<Args>...>;
    return submit_impl<Fn, ArgsTuple>(core_, detail::single_mode, Fn(std::forward<F>(fn)),
                                      ArgsTuple(std::forward<Args>(args)...));
  }

  /// `fn(x)` for each `x` of `inputs`, as a stream of results (Python's `Executor.map`,
  /// `Pool.imap` and, with `ordered = false`, `Pool.imap_unordered`). The first `buffersize`
  /// chunks are submitted at the call, the rest as results are consumed, so `inputs` may be
  /// unbounded; an lvalue range is referenced (keep it alive while the stream is used), an
  /// rvalue range is moved into the stream. Throws `std::logic_error` after `shutdown`.
  template <typename F, std::ranges::input_range Range>
  auto map(F fn, Range&& inputs, map_options options = {}) {
    using In = std::decay_t<std::ranges::range_reference_t<Range>>;
    return map_impl<F, std::tuple<In>>(std::move(fn), std::forward<Range>(inputs),
                                       std::move(options),
                                       [](auto&& x) { return std::tuple<In>(x); });
  }
  /// `fn(a, b, ...)` for each tuple of `inputs` (Python's `Pool.starmap`, lazily).
  template <typename F, std::ranges::input_range Range>
  auto starmap(F fn, Range&& inputs, map_options options = {}) {
    using Tuple = std::decay_t<std::ranges::range_reference_t<Range>>;
    return map_impl<F, Tuple>(std::move(fn), std::forward<Range>(inputs), std::move(options),
                              [](auto&& t) { return Tuple(t); });
  }

  /// Stops taking work. `cancel_futures`: tasks not yet running are cancelled. `wait`: blocks
  /// until every task has finished and every worker exited and was reaped. Called on a thread
  /// that runs the pool's executor (a done callback, say), it never blocks: `wait` is ignored.
  void shutdown(bool wait = true, bool cancel_futures = false) {
    detail::pool_shutdown(core_, wait, cancel_futures);
  }
  /// Shuts down and completes when every task has finished and every worker is reaped.
  /// Completion: `void()`. Cancellation: none.
  template <typename Token = default_token>
  auto async_shutdown(bool cancel_futures = false, Token&& token = {}) {
    return asio::async_initiate<Token, void()>(
        [core = core_, cancel_futures](auto handler) {
          detail::pool_async_shutdown(core, cancel_futures, std::move(handler));
        },
        token);
  }
  /// Shuts down (cancelling queued tasks) and sends SIGTERM to every worker; the tasks they ran
  /// fail with `worker_died`.
  void terminate_workers();
  /// As `terminate_workers`, with SIGKILL.
  void kill_workers();

  pool_stats stats() const { return detail::pool_get_stats(*core_); }
  /// The pids of the live workers.
  std::vector<int> worker_pids() const { return detail::pool_worker_pids(*core_); }

 private:
  template <typename Fn, typename ArgsTuple, typename Args>
  static auto submit_impl(const std::shared_ptr<detail::pool_core>& core, std::uint8_t mode, Fn fn,
                          Args&& args)
      -> future<std::conditional_t<std::is_same_v<std::decay_t<Args>, ArgsTuple>,
                                   detail::apply_result_t<Fn, ArgsTuple>,
                                   std::vector<detail::apply_result_t<Fn, ArgsTuple>>>> {
    using R1 = detail::apply_result_t<Fn, ArgsTuple>;
    using R =
        std::conditional_t<std::is_same_v<std::decay_t<Args>, ArgsTuple>, R1, std::vector<R1>>;
    static_assert(detail::task_callable<Fn>,
                  "coproc::process_pool: the function must be a function pointer, a captureless "
                  "lambda (or other empty callable), or an encodable object: a lambda's captures "
                  "cannot cross to a worker that is already running (pass them as arguments)");
    static_assert(encodable<ArgsTuple>,
                  "coproc::process_pool: every argument type must be encodable");
    static_assert(std::is_void_v<R> || encodable<R>,
                  "coproc::process_pool: the result type must be encodable");
    const std::uintptr_t invoker =
        reinterpret_cast<std::uintptr_t>(&detail::fork_invoke<Fn, ArgsTuple>);
    std::string frame;
    if (detail::pool_method(*core) == start_method::spawn) {
      if constexpr (detail::is_function_pointer_v<Fn>) {
        const auto* reg = detail::find_function(reinterpret_cast<detail::any_function>(fn));
        if (!reg)
          throw std::invalid_argument(
              "coproc::process_pool: with the spawn start method a task must be a function "
              "registered with COPROC_REGISTER (this one is not)");
        frame = detail::task_frame_start(0, reg->name, mode);
        using Params = typename detail::function_traits<Fn>::args;
        if constexpr (std::is_same_v<std::decay_t<Args>, ArgsTuple>) {
          if constexpr (std::is_constructible_v<Params, ArgsTuple&&>)
            encode_to(frame, Params(std::move(args)));
          else
            throw std::invalid_argument("coproc::process_pool: arguments do not convert");
        } else {
          std::vector<Params> ps;
          ps.reserve(args.size());
          for (auto& a : args) {
            if constexpr (std::is_constructible_v<Params, ArgsTuple&&>)
              ps.emplace_back(std::move(a));
            else
              throw std::invalid_argument("coproc::process_pool: arguments do not convert");
          }
          encode_to(frame, ps);
        }
      } else {
        throw std::invalid_argument(
            "coproc::process_pool: with the spawn start method a task must be a function "
            "registered with COPROC_REGISTER (lambdas and objects need the fork start method)");
      }
    } else {
      frame = detail::task_frame_start(invoker, {}, mode);
      if constexpr (detail::is_function_pointer_v<Fn>) {
        frame.append(reinterpret_cast<const char*>(&fn), sizeof fn);
      } else if constexpr (!(std::is_empty_v<Fn> && std::default_initializable<Fn>)) {
        const std::size_t at = frame.size();
        frame.append(4, '\0');
        encode_to(frame, fn);
        const auto n = static_cast<std::uint32_t>(frame.size() - at - 4);
        std::memcpy(frame.data() + at, &n, 4);
      }
      encode_to(frame, args);
    }
    detail::finish_task_frame(frame);
    promise<R> p(detail::pool_executor(*core));
    auto fut = p.get_future();
    detail::pool_task t;
    t.frame = std::move(frame);
    t.state = p.release();
    t.resolve = &detail::resolve_task<R>;
    t.retries_left = detail::pool_retries(*core);
    detail::pool_submit(*core, std::move(t));
    return fut;
  }

  template <typename F, typename ArgsTuple, typename Range, typename Convert>
  auto map_impl(F fn, Range&& inputs, map_options options, Convert convert) {
    using R = detail::apply_result_t<F, ArgsTuple>;
    static_assert(!std::is_void_v<R>, "coproc: map needs a function that returns a value");
    if (options.buffersize == 0) options.buffersize = 2 * size();
    detail::pool_check_open(*core_, "map");
    auto in = detail::read_lazily<ArgsTuple>(std::forward<Range>(inputs), std::move(convert));
    typename detail::map_state<R, ArgsTuple>::submitter submit = [core = core_,
                                                                  fn](std::vector<ArgsTuple> c) {
      return submit_impl<F, ArgsTuple>(core, detail::chunk_mode, fn, std::move(c));
    };
    auto state = std::make_shared<detail::map_state<R, ArgsTuple>>(
        get_executor(), std::move(in.pull), std::move(submit), std::move(options), in.total);
    return result_stream<R>(std::move(state));
  }

  std::unique_ptr<detail::event_thread> thread_;  // its own event loop, if any
  std::shared_ptr<detail::pool_core> core_;
};

}  // namespace coproc
