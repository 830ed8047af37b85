// Composition of futures (<coproc/future.hpp>), as Python's concurrent.futures: `as_completed`
// yields futures in the order they finish, `wait` / `async_wait` split them into done and not
// done, and the coroutine helpers `when_all` / `when_any` combine their values. Every function
// takes any mix of futures (a range of `future<T>`, or of `future_base` for mixed types), and
// `make_future(child&)` turns a child's exit into a future so commands race pool tasks.
//
// Nothing here changes a future: a timeout or a cancelled wait leaves the work running, and the
// futures may be waited on again, by anyone.
#pragma once

#include <coproc/child.hpp>
#include <coproc/config.hpp>
#include <coproc/error.hpp>
#include <coproc/exit_status.hpp>
#include <coproc/future.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_state.hpp>
#include <boost/asio/compose.hpp>

#include <array>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace coproc {

/// A range of futures: `std::vector<future<int>>`, or `std::vector<future_base>` for a mix.
template <typename R>
concept future_range = std::ranges::input_range<R> &&
    std::derived_from<std::remove_cvref_t<std::ranges::range_reference_t<R>>, future_base>;

/// Settings of `as_completed`.
struct as_completed_options {
  /// Counted from the `as_completed` call: once it has passed, asking for the next future
  /// while none is done fails with `errc::timed_out` (the futures keep running).
  std::optional<std::chrono::steady_clock::duration> timeout = std::nullopt;
  /// Called as `progress(done, total)` each time one of the futures is done (those done at the
  /// call too), on that future's executor, one call at a time, `done` counting 1 to `total`,
  /// for as long as the stream exists. What it throws is reported on stderr and ignored.
  std::function<void(std::size_t done, std::size_t total)> progress = {};
};

namespace detail {

using future_states = std::vector<std::shared_ptr<future_state_base>>;

template <typename R>
future_states states_of(const R& futures) {
  future_states states;
  if constexpr (std::ranges::sized_range<const R>) states.reserve(std::ranges::size(futures));
  for (const future_base& f : futures) states.push_back(f.state());
  return states;
}

// The executor of an operation on `states`: the first future's; `asio::system_executor` when
// there is none (the operation then completes without waiting, through it to the handler's
// own executor when it has one).
executor_type executor_of(const future_states& states);

// The engine of `as_completed_stream` (src/wait.cpp), on indices into the futures.
class as_completed_core {
 public:
  using next_handler = asio::any_completion_handler<void(error_code, std::optional<std::size_t>)>;
  static std::shared_ptr<as_completed_core> create(future_states states,
                                                   as_completed_options options);
  as_completed_core() = default;
  as_completed_core(const as_completed_core&) = delete;
  as_completed_core& operator=(const as_completed_core&) = delete;
  virtual ~as_completed_core() = default;

  virtual const executor_type& executor() const noexcept = 0;
  virtual void async_next(next_handler h) = 0;
  virtual std::optional<std::size_t> next() = 0;
  virtual std::size_t remaining() const = 0;
  // Completes a pending `async_next` with `operation_aborted` (the stream is going away).
  virtual void close() = 0;
};

}  // namespace detail

template <typename F>
requires std::derived_from<F, future_base>
class as_completed_stream;

template <future_range R>
auto as_completed(R&& futures, as_completed_options options = {});

/// The futures given to `as_completed`, handed out in the order they finish: those already
/// done at the call first (in their input order), then each as it completes. `F` is the
/// element type of the input range. Move-only; not for use by two threads at once (as an Asio
/// I/O object), and one `async_next` at a time.
///
/// Destruction: a pending `async_next` completes with `operation_aborted`; the futures are
/// unaffected, and the progress callback is no longer called.
template <typename F>
requires std::derived_from<F, future_base>
class as_completed_stream {
 public:
  using future_type = F;

  as_completed_stream(as_completed_stream&&) noexcept = default;
  as_completed_stream& operator=(as_completed_stream&& o) noexcept {
    if (this != &o) {
      close();
      core_ = std::move(o.core_);
      futures_ = std::move(o.futures_);
    }
    return *this;
  }
  ~as_completed_stream() { close(); }

  /// The first future's executor (`asio::system_executor` for no futures).
  executor_type get_executor() const noexcept { return core_->executor(); }

  /// The next future to be done. Completion: `void(error_code, std::optional<F>)`: a done
  /// future; `std::nullopt` once every future has been handed out. Errors:
  /// `errc::timed_out` when the stream's timeout has passed and none of the futures not yet
  /// handed out is done (they keep running; a later call still hands out those that finish).
  /// Cancellation: per-operation, all types: completes with `operation_aborted` and loses no
  /// future (a later call hands it out). Throws `std::logic_error` when another `async_next`
  /// or a `next()` is in progress.
  template <typename Token = default_token>
  auto async_next(Token&& token = {}) {
    return asio::async_compose<Token, void(error_code, std::optional<F>)>(
        [core = core_, futures = futures_, started = false](
            auto& self, error_code ec = {}, std::optional<std::size_t> i = {}) mutable {
          if (!started) {
            started = true;
            // A composed operation passes only terminal cancellation unless told otherwise.
            self.reset_cancellation_state(asio::enable_total_cancellation());
            auto c = core;  // `core` lives in the operation that `self` moves away
            return c->async_next(std::move(self));
          }
          std::optional<F> f;
          if (i) f = (*futures)[*i];
          self.complete(ec, std::move(f));
        },
        token, core_->executor());
  }

  /// Blocks for the next future: `std::nullopt` once every future has been handed out.
  /// Throws `system_error(errc::timed_out)` when the stream's timeout passes first (the
  /// stream stays usable), and `std::logic_error` when it would block on a thread that runs
  /// the first future's io_context (the futures could never complete) or while an
  /// `async_next` is pending. Needs the futures' event loop running on another thread.
  std::optional<F> next() {
    auto i = core_->next();
    if (!i) return std::nullopt;
    return (*futures_)[*i];
  }

  /// How many futures have not been handed out yet.
  std::size_t remaining() const { return core_->remaining(); }

 private:
  template <future_range R>
  friend auto as_completed(R&& futures, as_completed_options options);

  as_completed_stream(std::shared_ptr<detail::as_completed_core> core,
                      std::shared_ptr<const std::vector<F>> futures)
      : core_(std::move(core)), futures_(std::move(futures)) {}
  void close() noexcept {
    if (core_) core_->close();
  }

  std::shared_ptr<detail::as_completed_core> core_;
  std::shared_ptr<const std::vector<F>> futures_;
};

/// Starts watching `futures` (copied: futures are shared handles) and returns a stream that
/// hands them out as they finish (see `as_completed_stream`). The timeout in `options` counts
/// from this call.
///
///     auto done = coproc::as_completed(futures, {.timeout = 10s});
///     while (auto f = co_await done.async_next()) use(co_await f->async_get());
template <future_range R>
auto as_completed(R&& futures, as_completed_options options) {
  using F = std::remove_cvref_t<std::ranges::range_value_t<R>>;
  auto copies = std::make_shared<std::vector<F>>();
  for (const auto& f : futures) copies->push_back(f);
  auto core = detail::as_completed_core::create(detail::states_of(*copies), std::move(options));
  return as_completed_stream<F>(std::move(core), std::move(copies));
}

/// When `wait` returns (Python's FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED).
enum class return_when {
  first_completed,  ///< any future is done (at once when one already is, or there are none)
  first_exception,  ///< any future finished by raising (a cancelled one does not count), or
                    ///< all are done
  all_completed,    ///< all futures are done
};

/// Indices into the waited range, ascending: the futures that were done at the end of the
/// wait, and those that were not.
struct wait_result {
  std::vector<std::size_t> done;
  std::vector<std::size_t> not_done;
};

namespace detail {
using wait_handler = asio::any_completion_handler<void(error_code, wait_result)>;
wait_result wait_states(const future_states& states, return_when when,
                        std::optional<std::chrono::steady_clock::duration> timeout);
void start_wait(future_states states, return_when when,
                std::optional<std::chrono::steady_clock::duration> timeout, wait_handler h);
}  // namespace detail

/// Blocks until `when` holds for `futures`, or `timeout` passes, and returns which are done
/// (a timeout is not an error: the split says what finished). Throws `std::logic_error` when
/// it would block on a thread that runs one of the futures' io_context; needs the futures'
/// event loop running on another thread.
template <future_range R>
wait_result wait(const R& futures, return_when when = return_when::all_completed,
                 std::optional<std::chrono::steady_clock::duration> timeout = std::nullopt) {
  return detail::wait_states(detail::states_of(futures), when, timeout);
}

/// Waits until `when` holds for `futures`, or `timeout` (counted from the start of the
/// operation) passes. Completion: `void(error_code, wait_result)`; a timeout is not an error.
/// Cancellation: per-operation, all types: completes with `operation_aborted` and the split
/// at that moment; the futures are unaffected. The futures are copied at the call.
template <future_range R, typename Token = default_token>
auto async_wait(const R& futures, return_when when = return_when::all_completed,
                std::optional<std::chrono::steady_clock::duration> timeout = std::nullopt,
                Token&& token = {}) {
  auto states = detail::states_of(futures);
  auto ex = detail::executor_of(states);
  return asio::async_compose<Token, void(error_code, wait_result)>(
      [states = std::move(states), when, timeout, started = false](auto& self, error_code ec = {},
                                                                   wait_result r = {}) mutable {
        if (!started) {
          started = true;
          // A composed operation passes only terminal cancellation unless told otherwise.
          self.reset_cancellation_state(asio::enable_total_cancellation());
          auto s = std::move(states);
          return detail::start_wait(std::move(s), when, timeout, std::move(self));
        }
        self.complete(ec, std::move(r));
      },
      token, ex);
}

namespace detail {

template <typename T>
using result_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

template <typename T>
result_t<T> result_of(const future<T>& f) {
  if constexpr (std::is_void_v<T>) {
    f.get();
    return {};
  } else {
    return f.get();
  }
}

template <typename F>
inline constexpr bool is_future = false;
template <typename T>
inline constexpr bool is_future<future<T>> = true;

template <typename T>
asio::awaitable<std::vector<result_t<T>>> when_all_vector(std::vector<future<T>> futures) {
  for (const auto& f : futures) {
    auto op = f.async_wait();
    co_await std::move(op);
  }
  std::vector<result_t<T>> values;
  values.reserve(futures.size());
  for (const auto& f : futures) values.push_back(result_of(f));
  co_return values;
}

asio::awaitable<std::size_t> when_any_states(future_states states);

}  // namespace detail

/// `co_await when_all(f1, f2, ...)`: waits until every future is done, then gives their
/// values as a tuple (`std::monostate` for a `future<void>`), or rethrows the first exception
/// in argument order (`system_error(operation_aborted)` for a cancelled future). Cancelling
/// the awaiting coroutine stops the wait (throws `system_error(operation_aborted)`); the
/// futures are unaffected.
template <typename... T>
asio::awaitable<std::tuple<detail::result_t<T>...>> when_all(future<T>... futures) {
  const std::array<const future_base*, sizeof...(T)> all{&futures...};
  for (const future_base* f : all) {
    auto op = f->async_wait();
    co_await std::move(op);
  }
  // A braced list evaluates in order, so the first exception in argument order propagates.
  co_return std::tuple<detail::result_t<T>...>{detail::result_of(futures)...};
}

/// `co_await when_all(futures)` over a range of `future<T>`: their values in input order, or
/// the first exception in input order; as the variadic form otherwise.
template <future_range R>
requires detail::is_future<std::remove_cvref_t<std::ranges::range_value_t<R>>>
auto when_all(R&& futures) {
  using F = std::remove_cvref_t<std::ranges::range_value_t<R>>;
  std::vector<F> copies;
  for (const auto& f : futures) copies.push_back(f);
  return detail::when_all_vector(std::move(copies));
}

/// `co_await when_any(futures)`: the index of the first future to be done (the lowest index
/// among those already done at the start); the others keep running. Only waits: it does not
/// look at the value, so an exception is not rethrown. Throws `std::invalid_argument` for an
/// empty range. Cancelling the awaiting coroutine stops the wait (throws
/// `system_error(operation_aborted)`); the futures are unaffected.
template <future_range R>
asio::awaitable<std::size_t> when_any(const R& futures) {
  return detail::when_any_states(detail::states_of(futures));
}

/// `co_await when_any(f1, f2, ...)`: as the range form, over futures of any types.
template <typename... F>
requires(sizeof...(F) > 0 && (std::derived_from<F, future_base> &&
                              ...)) asio::awaitable<std::size_t> when_any(const F&... futures) {
  return detail::when_any_states(detail::future_states{futures.state()...});
}

/// A future for `c`'s exit: its status once the child has exited and was reaped (as
/// `c.async_wait`), or `system_error` with the wait's error (`errc::not_running` after
/// `detach()`, ECHILD when someone else reaped it). `c` must stay alive (it may be moved)
/// until then; destroying it kills the child. The future is `running` at once and `cancel()`
/// does not stop the child (it returns false): signal the child instead.
///
///     auto i = co_await coproc::when_any(pool.submit(f, x), coproc::make_future(c));
future<exit_status> make_future(child& c);

}  // namespace coproc
