// `future<T>`: the result of work that is already under way (a pool task, a coroutine, a child's
// exit), as Python's concurrent.futures.Future. `promise<T>` is the producing side.
//
// A future is a shared handle: copies refer to the same result. It resolves exactly once, with a
// value, an exception, or as cancelled; a promise destroyed before resolving resolves its future
// with `std::future_error(broken_promise)`.
//
// Waiting:
// - `co_await fut` (inside an `asio::awaitable` coroutine) gives the value or throws;
// - `fut.async_get(token)` / `fut.async_wait(token)` with any completion token;
// - `get()`, `get(timeout)`, `wait()`, `wait_for(timeout)` block the calling thread. They need the
//   event loop that resolves the future to run on another thread; called on a thread running the
//   future's io_context they throw `std::logic_error` instead of deadlocking.
#pragma once

#include <coproc/config.hpp>
#include <coproc/detail/awaitable_fix.hpp>
#include <coproc/error.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_state.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/post.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc {

template <typename T>
class future;
template <typename T>
class promise;

namespace detail {

// The state shared by a promise and its futures. The value lives in the typed subclass; everything
// else (status, exception, waiters, callbacks) is here, so composition works on any future.
class future_state_base : public std::enable_shared_from_this<future_state_base> {
 public:
  enum class status : std::uint8_t { pending, running, finished, cancelled };

  explicit future_state_base(executor_type ex) : ex_(std::move(ex)) {}
  future_state_base(const future_state_base&) = delete;
  future_state_base& operator=(const future_state_base&) = delete;
  virtual ~future_state_base() = default;

  const executor_type& executor() const noexcept { return ex_; }

  // Producer side.
  bool set_running();  // false when the future was cancelled first
  bool set_exception(std::exception_ptr e);
  bool cancel();  // true when it was pending (now cancelled); false once running or done

  status state() const;
  bool done() const;
  std::exception_ptr exception() const;  // null unless finished with an exception

  // Completes `h` (with success, or `operation_aborted` when its cancellation slot fires) once the
  // state is done. The handler runs through its associated executor (default: the future's).
  void add_waiter(asio::any_completion_handler<void(error_code)> h);
  // Runs `fn` on the future's executor once done (at once, posted, when already done).
  void add_callback(std::function<void()> fn);
  // Blocks until done or `deadline`; true when done.
  bool wait_until(std::optional<std::chrono::steady_clock::time_point> deadline) const;
  // Wakes the threads blocked in wait_until (resolution does it, or its completion_batch).
  void wake_sleepers() const;

 protected:
  // Runs `set` under the lock and resolves, unless already done. Returns whether it resolved.
  template <typename Set>
  bool finish(Set&& set) {
    std::unique_lock lock(m_);
    if (status_ == status::finished || status_ == status::cancelled) return false;
    set();
    status_ = status::finished;
    return resolve(lock);
  }
  bool resolve(std::unique_lock<std::mutex>& lock);
  mutable std::mutex m_;

 private:
  struct waiter {
    std::uint64_t id;
    asio::any_completion_handler<void(error_code)> handler;
  };
  void cancel_waiter(std::uint64_t id);
  void check_not_on_loop() const;

  executor_type ex_;
  mutable std::condition_variable cv_;
  mutable unsigned sleepers_ = 0;  // threads blocked in wait_until
  status status_ = status::pending;
  std::exception_ptr error_;
  std::uint64_t next_waiter_ = 0;
  std::vector<waiter> waiters_;
  std::vector<std::function<void()>> callbacks_;
};

template <typename T>
class future_state final : public future_state_base {
 public:
  using future_state_base::future_state_base;
  bool set_value(T v) {
    return finish([&] { value_.emplace(std::move(v)); });
  }
  // Only after done() with no exception.
  T& value() { return *value_; }

 private:
  std::optional<T> value_;
};

template <>
class future_state<void> final : public future_state_base {
 public:
  using future_state_base::future_state_base;
  bool set_value() {
    return finish([] {});
  }
};

// Holds back, on this thread, the completions of the futures resolved while it is active,
// until `flush()`, which dispatches them: handlers whose executor runs on this thread run at
// once, inside the flush, the others are posted. A resolver uses it to resolve under its own
// lock and complete after releasing it, without a trip through the event loop's queue. Only
// the outermost batch of a thread collects; an inner one does nothing. Destroyed without a
// flush, it posts what it holds.
class completion_batch {
 public:
  completion_batch() noexcept;
  ~completion_batch();
  completion_batch(const completion_batch&) = delete;
  completion_batch& operator=(const completion_batch&) = delete;
  // Completes what was collected. What a handler run inline throws is its executor's to
  // handle (an io_context's run() rethrows it after the flush); should dispatching itself
  // throw, the rest are posted and the exception propagates.
  void flush();

 private:
  bool owner_;
};

// Runs a done callback, reporting (not propagating) what it throws.
void run_callback(const std::function<void()>& fn) noexcept;

// The exception a cancelled future gives to whoever asks for its value.
std::exception_ptr cancelled_exception();

}  // namespace detail

/// What all futures share, whatever their value type: state queries, waiting, callbacks. The
/// composition functions (`as_completed`, `wait`, `when_any`, ...) take any mix of futures
/// through this type.
class future_base {
 public:
  future_base() = default;

  /// False for a default-constructed future.
  bool valid() const noexcept { return state_ != nullptr; }
  executor_type get_executor() const { return state_->executor(); }

  /// True once resolved (value, exception or cancelled).
  bool done() const { return state_->done(); }
  /// True while the work runs (a pool task taken by a worker, say).
  bool running() const { return state_->state() == detail::future_state_base::status::running; }
  bool cancelled() const { return state_->state() == detail::future_state_base::status::cancelled; }
  /// Cancels work that has not started: true when it was pending and now is cancelled (its
  /// waiters and callbacks run), false when it is running or done. Running work is not
  /// interrupted (as Python's `Future.cancel`).
  bool cancel() { return state_->cancel(); }

  /// The exception it finished with; null for a value or while not done. A cancelled future
  /// gives `system_error(asio::error::operation_aborted)`.
  std::exception_ptr exception() const {
    if (cancelled()) return detail::cancelled_exception();
    return state_->exception();
  }

  /// Waits until the future is done, however it ends. Completion: `void(error_code)`; the
  /// error is `operation_aborted` only when this wait itself is cancelled (all cancellation
  /// types; the future is unaffected).
  template <typename Token = default_token>
  auto async_wait(Token&& token = {}) const {
    return asio::async_initiate<Token, void(error_code)>(
        [](auto handler, std::shared_ptr<detail::future_state_base> s) {
          s->add_waiter(std::move(handler));
        },
        token, state_);
  }

  /// Blocks until done (see the header comment on blocking waits).
  void wait() const { state_->wait_until(std::nullopt); }
  /// Blocks until done or `timeout` passes; true when done.
  template <typename Rep, typename Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) const {
    return state_->wait_until(std::chrono::steady_clock::now() +
                              std::chrono::ceil<std::chrono::steady_clock::duration>(timeout));
  }

  /// Runs `fn()` on the future's executor once it is done (posted at once when already done).
  /// What `fn` throws is reported on stderr and otherwise ignored.
  void add_done_callback(std::function<void()> fn) const { state_->add_callback(std::move(fn)); }

  /// The shared state (for the library's own composition code).
  const std::shared_ptr<detail::future_state_base>& state() const noexcept { return state_; }

 protected:
  explicit future_base(std::shared_ptr<detail::future_state_base> s) : state_(std::move(s)) {}
  std::shared_ptr<detail::future_state_base> state_;
};

/// The result of work under way. See the top of this header.
template <typename T>
class future : public future_base {
  static_assert(std::is_void_v<T> || std::is_default_constructible_v<T>,
                "coproc::future<T>: T must be default-constructible (it is a completion value)");

 public:
  using value_type = T;
  /// The completion signature of `async_get`.
  using get_signature =
      std::conditional_t<std::is_void_v<T>, void(std::exception_ptr),
                         void(std::exception_ptr, std::conditional_t<std::is_void_v<T>, int, T>)>;
  future() = default;

  /// Waits and gives the value (or the exception). Completion: `void(std::exception_ptr, T)`
  /// (`void(std::exception_ptr)` for `future<void>`). A cancelled future, or this operation
  /// cancelled (all types), gives `system_error(operation_aborted)`.
  template <typename Token = default_token>
  auto async_get(Token&& token = {}) const {
    return asio::async_compose<Token, get_signature>(
        [s = typed(), started = false](auto& self, error_code ec = {}) mutable {
          if (!started) {
            started = true;
            // A composed operation passes only terminal cancellation unless told otherwise.
            self.reset_cancellation_state(asio::enable_total_cancellation());
            auto st = s;  // `s` lives in the operation that `self` moves away
            return st->add_waiter(std::move(self));
          }
          std::exception_ptr e;
          if (ec)
            e = std::make_exception_ptr(boost::system::system_error(ec, "future"));
          else if (s->state() == detail::future_state_base::status::cancelled)
            e = detail::cancelled_exception();
          else
            e = s->exception();
          if constexpr (std::is_void_v<T>)
            self.complete(e);
          else
            self.complete(e, e ? T{} : s->value());
        },
        token, state_->executor());
  }

  /// Makes a future an Asio asynchronous operation (`fut(token)` is `fut.async_get(token)`), so
  /// `co_await pool.submit(f, x)` works on the returned future directly. For a future you keep,
  /// `co_await fut.async_get()` (Boost 1.81's `co_await` takes operations as rvalues only).
  template <typename Token>
  requires(asio::completion_token_for<Token, get_signature>) auto operator()(Token&& token) const {
    return async_get(std::forward<Token>(token));
  }

  /// Blocks for the value; rethrows the exception. Throws `system_error(operation_aborted)` for
  /// a cancelled future.
  T get() const {
    wait();
    return take_value();
  }
  /// As `get()`, but throws `system_error(errc::timed_out)` when not done within `timeout`
  /// (the work goes on).
  template <typename Rep, typename Period>
  T get(std::chrono::duration<Rep, Period> timeout) const {
    if (!wait_for(timeout))
      throw boost::system::system_error(make_error_code(errc::timed_out), "future::get");
    return take_value();
  }

  /// Runs `fn(future)` on the future's executor once done; see `future_base`.
  void add_done_callback(std::function<void(const future&)> fn) const {
    state_->add_callback([f = *this, fn = std::move(fn)] { fn(f); });
  }
  using future_base::add_done_callback;

  /// A future already resolved with `v`, on `ex`.
  template <typename... V>
  static future ready(executor_type ex, V&&... v) {
    auto s = std::make_shared<detail::future_state<T>>(std::move(ex));
    s->set_value(std::forward<V>(v)...);
    return future(std::move(s));
  }

 private:
  template <typename>
  friend class promise;
  explicit future(std::shared_ptr<detail::future_state<T>> s) : future_base(std::move(s)) {}
  detail::future_state<T>* typed_raw() const {
    return static_cast<detail::future_state<T>*>(state_.get());
  }
  std::shared_ptr<detail::future_state<T>> typed() const {
    return std::static_pointer_cast<detail::future_state<T>>(state_);
  }
  T take_value() const {
    if (cancelled()) std::rethrow_exception(detail::cancelled_exception());
    if (auto e = state_->exception()) std::rethrow_exception(e);
    if constexpr (!std::is_void_v<T>) return typed_raw()->value();
  }
};

/// The producing side of a `future`: resolves it once. Move-only. Destroying a promise that did
/// not resolve resolves its future with `std::future_error(broken_promise)`.
template <typename T>
class promise {
 public:
  explicit promise(executor_type ex)
      : state_(std::make_shared<detail::future_state<T>>(std::move(ex))) {}
  promise(promise&&) noexcept = default;
  promise& operator=(promise&& o) noexcept {
    if (this != &o) {
      abandon();
      state_ = std::move(o.state_);
    }
    return *this;
  }
  ~promise() { abandon(); }

  future<T> get_future() const { return future<T>(state_); }

  /// Marks the work as started; false when the future was cancelled first (do not start it).
  bool set_running() { return state_->set_running(); }
  /// Resolves with a value; false (and no effect) when already resolved or cancelled.
  template <typename... V>
  bool set_value(V&&... v) {
    return state_->set_value(std::forward<V>(v)...);
  }
  bool set_exception(std::exception_ptr e) { return state_->set_exception(std::move(e)); }
  bool done() const { return state_->done(); }
  const std::shared_ptr<detail::future_state<T>>& state() const noexcept { return state_; }
  /// Hands the shared state to code that guarantees to resolve it (the pools' engines); the
  /// promise is empty afterwards and its destructor does nothing.
  std::shared_ptr<detail::future_state<T>> release() noexcept { return std::move(state_); }

 private:
  void abandon() {
    if (state_ && !state_->done())
      state_->set_exception(
          std::make_exception_ptr(std::future_error(std::future_errc::broken_promise)));
  }
  std::shared_ptr<detail::future_state<T>> state_;
};

/// Starts `aw` on `ex` now (as `co_spawn`) and gives its future: a coroutine, an `async_call`,
/// a child's `async_wait(asio::use_awaitable)`, so they compose with pool futures in
/// `as_completed`, `wait`, `when_any` and `when_all`. The future is `running` at once and
/// cannot be cancelled through `cancel()` (it returns false).
template <typename T>
future<T> make_future(const executor_type& ex, asio::awaitable<T> aw) {
  promise<T> p(ex);
  p.set_running();
  auto f = p.get_future();
  asio::co_spawn(ex, std::move(aw), [p = std::move(p)](std::exception_ptr e, auto... v) mutable {
    if (e)
      p.set_exception(e);
    else
      p.set_value(std::move(v)...);
  });
  return f;
}

}  // namespace coproc
