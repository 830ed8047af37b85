// `pool`: Python's multiprocessing.Pool, as a thin layer over `process_pool`: blocking `apply`,
// `map` and `starmap`, their `_async` forms with callbacks, `imap`, `imap_unordered`, and the
// `close` / `terminate` / `join` life cycle.
//
// It owns a `process_pool` with its own event loop thread; `executor()` gives it, for the rest
// of coproc (`submit`, `as_completed`, `stats`). Tasks follow the process pool's rules: with the
// fork start method (the default) a function pointer, a captureless lambda or an encodable
// function object, with encodable arguments and results; with spawn, a function registered
// with `COPROC_REGISTER`.
//
// Callbacks (`callback`, `error_callback`) run on the event loop thread, exactly one of them per
// call, before its `async_result` becomes ready (as in Python). What they throw is reported on
// stderr and otherwise ignored. They must not block: every result of the pool passes through
// that thread.
//
// Where it differs from Python, on purpose:
// - `imap` and `imap_unordered` read their input lazily (a few chunks ahead of the consumer),
//   so an unbounded input works; `map`, `starmap` and their `_async` forms read it whole at the
//   call, as Python does.
// - `close()` refuses new calls, but a stream made before it keeps submitting its input until
//   `join()`; the workers exit at `join()` (in Python, as soon as the work is done). Consume an
//   `imap` stream before `join()`: a stream left with input fails with `std::logic_error`.
// - The destructor is `close()` + `join()` (Python's `with` block calls `terminate()`): the work
//   already submitted finishes.
#pragma once

#include <coproc/config.hpp>
#include <coproc/error.hpp>
#include <coproc/future.hpp>
#include <coproc/process_pool.hpp>
#include <coproc/result_stream.hpp>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc {

namespace detail {

// multiprocessing.Pool's chunk size for `n` inputs on `workers` workers: ceil(n / (4 * workers)),
// at least 1.
constexpr std::size_t pool_chunksize(std::size_t n, std::size_t workers) {
  const std::size_t per = 4 * (workers == 0 ? 1 : workers);
  const std::size_t c = n / per + (n % per != 0 ? 1 : 0);
  return c == 0 ? 1 : c;
}

// The callback of a result of type R: `void()` for void.
template <typename R>
struct pool_callback_of {
  using type = std::function<void(const R&)>;
};
template <>
struct pool_callback_of<void> {
  using type = std::function<void()>;
};
template <typename R>
using pool_callback = typename pool_callback_of<R>::type;

// Resolves `out` from `done` after running the callback that fits, on `done`'s executor.
template <typename R>
void pool_finish(const future<R>& done, promise<R>& out, const pool_callback<R>& on_value,
                 const std::function<void(std::exception_ptr)>& on_error) {
  if (auto e = done.exception()) {
    if (on_error) run_callback([&] { on_error(e); });
    out.set_exception(e);
  } else if constexpr (std::is_void_v<R>) {
    if (on_value) run_callback([&] { on_value(); });
    out.set_value();
  } else {
    R v = done.get();  // already done: no wait
    if (on_value) run_callback([&] { on_value(v); });
    out.set_value(std::move(v));
  }
}

// Collects a map stream into a vector on the stream's executor, one `async_next` after the
// other, then runs the callback that fits and resolves its promise.
template <typename R>
class pool_collector : public std::enable_shared_from_this<pool_collector<R>> {
 public:
  pool_collector(result_stream<R> s, promise<std::vector<R>> p,
                 pool_callback<std::vector<R>> on_value,
                 std::function<void(std::exception_ptr)> on_error)
      : stream_(std::move(s)),
        promise_(std::move(p)),
        on_value_(std::move(on_value)),
        on_error_(std::move(on_error)) {}

  void next() {
    stream_.async_next([self = this->shared_from_this()](std::exception_ptr e, std::optional<R> r) {
      if (!e && r) {
        self->values_.push_back(std::move(*r));
        self->next();
        return;
      }
      self->finish(e);
    });
  }

 private:
  void finish(std::exception_ptr e) {
    if (e) {
      if (on_error_) run_callback([&] { on_error_(e); });
      promise_.set_exception(e);
    } else {
      if (on_value_) run_callback([&] { on_value_(values_); });
      promise_.set_value(std::move(values_));
    }
  }

  result_stream<R> stream_;
  promise<std::vector<R>> promise_;
  pool_callback<std::vector<R>> on_value_;
  std::function<void(std::exception_ptr)> on_error_;
  std::vector<R> values_;
};

}  // namespace detail

/// A pool of worker processes with multiprocessing.Pool's interface. See the top of this header.
///
/// Destruction: `close()` + `join()` (unless `terminate()` was called: then it waits for the
/// killed workers to be reaped). Called on the event loop thread (from a callback), it does not
/// wait.
class pool {
 public:
  /// multiprocessing.pool.AsyncResult: the result of an `_async` call. A shared handle over a
  /// `future<T>`.
  template <typename T>
  class async_result {
   public:
    async_result() = default;
    explicit async_result(future<T> f) : f_(std::move(f)) {}

    /// Blocks for the value; rethrows the task's exception.
    T get() const { return f_.get(); }
    /// As `get()`, but throws `system_error(errc::timed_out)` when not ready within `timeout`
    /// (the work goes on).
    template <typename Rep, typename Period>
    T get(std::chrono::duration<Rep, Period> timeout) const {
      return f_.get(timeout);
    }
    /// Blocks until ready.
    void wait() const { f_.wait(); }
    /// Blocks until ready or `timeout` passes; true when ready.
    template <typename Rep, typename Period>
    bool wait(std::chrono::duration<Rep, Period> timeout) const {
      return f_.wait_for(timeout);
    }
    /// True once the result (or the exception) is there and the callback has run.
    bool ready() const { return f_.done(); }
    /// True when it finished with a value. Throws `std::logic_error` while not ready (Python
    /// raises ValueError).
    bool successful() const {
      if (!ready())
        throw std::logic_error("coproc::pool::async_result::successful: the result is not ready");
      return f_.exception() == nullptr;
    }
    /// The future behind it, to await it or compose it. A result with callbacks has a future
    /// of its own, resolved after the callback ran: `cancel()` on that one returns false.
    future<T> get_future() const { return f_; }

   private:
    future<T> f_;
  };

  /// The callback of a call whose result is `R` (`void()` for void).
  template <typename R>
  using result_callback = detail::pool_callback<R>;
  using error_callback_type = std::function<void(std::exception_ptr)>;

  /// Starts the workers (see `process_pool`'s constructor for errors).
  explicit pool(pool_options options = {}) : pp_(std::move(options)) {}
  pool(const pool&) = delete;
  pool& operator=(const pool&) = delete;
  ~pool() {
    {
      std::lock_guard lock(m_);
      if (state_ == state::running) state_ = state::closed;
    }
    pp_.shutdown(true);
  }

  /// The process pool underneath.
  process_pool& executor() noexcept { return pp_; }
  /// The number of worker processes.
  std::size_t size() const { return pp_.size(); }

  /// `fn(args...)` in a worker; blocks for its value (rethrows its exception). Throws
  /// `std::logic_error` after `close()` or `terminate()`, and on the event loop thread.
  template <typename F, typename... Args>
  requires(std::invocable<F&, Args&...>) auto apply(F fn, Args... args)
      -> std::decay_t<std::invoke_result_t<F&, Args&...>> {
    check_running("apply");
    return pp_.submit(std::move(fn), std::move(args)...).get();
  }

  /// `fn(args...)` in a worker, without blocking. `callback(value)` or `error_callback(e)` runs
  /// on the event loop thread once it is done (exactly one of them; a task cancelled by
  /// `terminate()` counts as failed). Throws `std::logic_error` after `close()` or
  /// `terminate()`.
  template <typename F, typename... Args,
            typename R = std::decay_t<std::invoke_result_t<F&, Args&...>>>
  requires(std::invocable<F&, Args&...>) async_result<R> apply_async(
      F fn, std::tuple<Args...> args = {}, result_callback<R> callback = {},
      error_callback_type error_callback = {}) {
    check_running("apply_async");
    auto f = std::apply([&](auto&... a) { return pp_.submit(fn, std::move(a)...); }, args);
    return async_result<R>(
        with_callbacks(std::move(f), std::move(callback), std::move(error_callback)));
  }

  /// `fn(x)` for each `x` of `inputs`, blocking for the results in input order; the first
  /// failure (in input order) is rethrown. `inputs` is read whole at the call. `chunksize`
  /// inputs go to a worker as one task; 0: Python's heuristic, ceil(n / (4 * workers)).
  template <typename F, std::ranges::input_range Range,
            typename In = std::decay_t<std::ranges::range_reference_t<Range>>,
            typename R = detail::apply_result_t<F, std::tuple<In>>>
  std::vector<R> map(F fn, Range&& inputs, std::size_t chunksize = 0) {
    return map_async(std::move(fn), std::forward<Range>(inputs), chunksize).get();
  }

  /// `map` without blocking: the inputs are read and every chunk submitted before it returns;
  /// the results are collected on the event loop thread. `callback(values)` or
  /// `error_callback(e)` (the first failure in input order) runs there, exactly one of them.
  template <typename F, std::ranges::input_range Range,
            typename In = std::decay_t<std::ranges::range_reference_t<Range>>,
            typename R = detail::apply_result_t<F, std::tuple<In>>>
  async_result<std::vector<R>> map_async(F fn, Range&& inputs, std::size_t chunksize = 0,
                                         result_callback<std::vector<R>> callback = {},
                                         error_callback_type error_callback = {}) {
    check_running("map_async");
    auto items = materialize<In>(std::forward<Range>(inputs));
    const auto options = whole_input_options(items.size(), chunksize);
    return collect<R>(pp_.map(std::move(fn), std::move(items), options), std::move(callback),
                      std::move(error_callback));
  }

  /// `fn(x)` for each `x` of `inputs`, as a stream of results in input order (Python's
  /// `imap`). `inputs` is read lazily, a few chunks ahead of the consumer; an lvalue range is
  /// referenced (keep it alive while the stream is used). See `result_stream`.
  template <typename F, std::ranges::input_range Range>
  auto imap(F fn, Range&& inputs, std::size_t chunksize = 1) {
    check_running("imap");
    return pp_.map(std::move(fn), std::forward<Range>(inputs),
                   map_options{.chunksize = chunksize == 0 ? 1 : chunksize});
  }
  /// As `imap`, in completion order (Python's `imap_unordered`).
  template <typename F, std::ranges::input_range Range>
  auto imap_unordered(F fn, Range&& inputs, std::size_t chunksize = 1) {
    check_running("imap_unordered");
    return pp_.map(std::move(fn), std::forward<Range>(inputs),
                   map_options{.chunksize = chunksize == 0 ? 1 : chunksize, .ordered = false});
  }

  /// `fn(a, b, ...)` for each tuple of `inputs`, blocking; otherwise as `map`.
  template <typename F, std::ranges::input_range Range,
            typename Tuple = std::decay_t<std::ranges::range_reference_t<Range>>,
            typename R = detail::apply_result_t<F, Tuple>>
  std::vector<R> starmap(F fn, Range&& inputs, std::size_t chunksize = 0) {
    return starmap_async(std::move(fn), std::forward<Range>(inputs), chunksize).get();
  }
  /// `starmap` without blocking; otherwise as `map_async`.
  template <typename F, std::ranges::input_range Range,
            typename Tuple = std::decay_t<std::ranges::range_reference_t<Range>>,
            typename R = detail::apply_result_t<F, Tuple>>
  async_result<std::vector<R>> starmap_async(F fn, Range&& inputs, std::size_t chunksize = 0,
                                             result_callback<std::vector<R>> callback = {},
                                             error_callback_type error_callback = {}) {
    check_running("starmap_async");
    auto items = materialize<Tuple>(std::forward<Range>(inputs));
    const auto options = whole_input_options(items.size(), chunksize);
    return collect<R>(pp_.starmap(std::move(fn), std::move(items), options), std::move(callback),
                      std::move(error_callback));
  }

  /// Refuses new calls (they throw `std::logic_error`); the work submitted goes on.
  void close() {
    std::lock_guard lock(m_);
    if (state_ == state::running) state_ = state::closed;
  }
  /// Refuses new calls and kills the workers now (`process_pool::kill_workers`): the tasks they
  /// ran fail with `worker_died`, the tasks not started fail or are cancelled; nothing waits.
  void terminate() {
    {
      std::lock_guard lock(m_);
      state_ = state::terminated;
    }
    pp_.kill_workers();
  }
  /// Waits until every submitted task has finished and every worker has exited. Throws
  /// `std::logic_error` unless `close()` or `terminate()` was called first (Python raises
  /// ValueError). On the event loop thread it does not wait.
  void join() {
    {
      std::lock_guard lock(m_);
      if (state_ == state::running)
        throw std::logic_error("coproc::pool::join: call close() or terminate() first");
    }
    pp_.shutdown(true);
  }

 private:
  enum class state { running, closed, terminated };

  void check_running(const char* what) const {
    std::lock_guard lock(m_);
    if (state_ != state::running)
      throw std::logic_error(std::string("coproc::pool::") + what +
                             ": the pool is not running (close() or terminate() was called)");
  }

  template <typename T, typename Range>
  static std::vector<T> materialize(Range&& inputs) {
    if constexpr (std::is_same_v<std::remove_cvref_t<Range>, std::vector<T>> &&
                  !std::is_lvalue_reference_v<Range>) {
      return std::move(inputs);
    } else {
      std::vector<T> items;
      if constexpr (std::ranges::sized_range<Range>)
        items.reserve(static_cast<std::size_t>(std::ranges::size(inputs)));
      for (auto&& x : inputs) items.emplace_back(x);
      return items;
    }
  }

  // Every chunk submitted when the stream is made, on the calling thread.
  map_options whole_input_options(std::size_t n, std::size_t chunksize) const {
    map_options o;
    o.chunksize = chunksize != 0 ? chunksize : detail::pool_chunksize(n, size());
    o.buffersize = n / o.chunksize + (n % o.chunksize != 0 ? 1 : 0);
    if (o.buffersize == 0) o.buffersize = 1;
    return o;
  }

  template <typename R>
  static async_result<std::vector<R>> collect(result_stream<R> s,
                                              result_callback<std::vector<R>> on_value,
                                              error_callback_type on_error) {
    promise<std::vector<R>> p(s.get_executor());
    p.set_running();
    auto f = p.get_future();
    auto c = std::make_shared<detail::pool_collector<R>>(std::move(s), std::move(p),
                                                         std::move(on_value), std::move(on_error));
    c->next();  // pulls and submits the whole input here, on the caller's thread
    return async_result<std::vector<R>>(std::move(f));
  }

  template <typename R>
  static future<R> with_callbacks(future<R> f, result_callback<R> on_value,
                                  error_callback_type on_error) {
    if (!on_value && !on_error) return f;
    auto p = std::make_shared<promise<R>>(f.get_executor());
    p->set_running();  // it follows the task: cancelling it would not stop the task
    auto out = p->get_future();
    f.add_done_callback(
        [p, on_value = std::move(on_value), on_error = std::move(on_error)](const future<R>& done) {
          detail::pool_finish(done, *p, on_value, on_error);
        });
    return out;
  }

  process_pool pp_;
  mutable std::mutex m_;
  state state_ = state::running;
};

}  // namespace coproc
