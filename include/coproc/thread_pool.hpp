// `thread_pool`: Python's concurrent.futures.ThreadPoolExecutor, with the interface of
// `process_pool`. Threads of this process run submitted callables; `submit` gives a `future`,
// `map` a `result_stream`. Any callable works (lambdas with captures, move-only objects), and the
// arguments are copied (decayed) into the task, as `std::thread` does.
//
// Threads: futures, done callbacks and map streams complete on the executor the pool is given;
// a pool built without one completes them on its own threads, which run those handlers between
// tasks. `submit`, `map` and the rest may be called from any thread, the pool's own included.
//
// Threads cannot be killed, so there is no `terminate_workers` or `kill_workers`: a task that
// never returns keeps its thread, and `shutdown(wait = true)` and the destructor wait for it.
//
// Every future resolves exactly once. Tasks accepted before a shutdown run (unless
// `cancel_futures` cancels them or an initializer breaks the pool); destroying the pool runs
// them too, as `shutdown(wait = true)` does.
//
// Implementation: `workers` `std::thread`s each run the initializer, then a private io_context.
// Tasks wait in the pool's own FIFO queue and each submission posts one "run the next task"
// handler to that io_context. Not `asio::thread_pool`: its threads start before any code of ours
// runs on them (the initializer must run on each thread before it takes a task), and attaching
// threads of our own to it is not thread-safe in Boost 1.81. Our own queue rather than one posted
// handler per task: `cancel_futures`, `stats()` and `cancel()` need the tasks no thread has taken.
// The io_context gives a pool without an executor a real Asio executor: timers (map timeouts)
// and waits on its futures work on its threads.
#pragma once

#include <coproc/config.hpp>
#include <coproc/error.hpp>
#include <coproc/future.hpp>
#include <coproc/process_pool.hpp>  // pool_stats, available_cpus
#include <coproc/result_stream.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc {

/// Settings of a `thread_pool`; every field has a sensible default.
struct thread_pool_options {
  /// Threads; 0: `available_cpus()`.
  std::size_t workers = 0;
  /// Runs once on each thread before it takes a task. If it throws, the pool is broken: queued
  /// and later tasks fail with errc::pool_broken, naming the exception.
  std::function<void()> initializer{};
  /// Appears in errors.
  std::string name = "thread-pool";
};

namespace detail {

// A task as the non-template engine sees it. It runs in two steps so that the pool's counters
// change before its future resolves: whoever sees the future done sees the counters updated.
class thread_task {
 public:
  explicit thread_task(std::shared_ptr<future_state_base> s) : state_(std::move(s)) {}
  thread_task(const thread_task&) = delete;
  thread_task& operator=(const thread_task&) = delete;
  virtual ~thread_task() = default;
  // Runs the callable; gives what it threw, or null (the value is kept for `resolve`).
  virtual std::exception_ptr invoke() noexcept = 0;
  // Resolves the future with what `invoke` produced.
  virtual void resolve(std::exception_ptr e) noexcept = 0;
  future_state_base& state() const noexcept { return *state_; }

 protected:
  std::shared_ptr<future_state_base> state_;
};

template <typename R, typename Call>
class thread_task_impl final : public thread_task {
 public:
  thread_task_impl(std::shared_ptr<future_state<R>> s, Call call)
      : thread_task(std::move(s)), call_(std::move(call)) {}

  std::exception_ptr invoke() noexcept override {
    try {
      if constexpr (std::is_void_v<R>)
        call_();
      else
        value_.emplace(call_());
      return nullptr;
    } catch (...) {
      return std::current_exception();
    }
  }

  void resolve(std::exception_ptr e) noexcept override {
    auto& s = static_cast<future_state<R>&>(*state_);
    if (e)
      s.set_exception(std::move(e));
    else if constexpr (std::is_void_v<R>)
      s.set_value();
    else
      s.set_value(std::move(*value_));
  }

 private:
  Call call_;
  std::conditional_t<std::is_void_v<R>, bool, std::optional<R>> value_{};
};

// The engine: the queue, the threads and the counters. Shared by the `thread_pool` handle and
// the threads, so a pool destroyed from one of its own threads stays alive until they end.
class thread_pool_core : public std::enable_shared_from_this<thread_pool_core> {
  using task_ptr = std::unique_ptr<thread_task>;

 public:
  thread_pool_core(const std::optional<executor_type>& ex, thread_pool_options o)
      : opts_(resolved(std::move(o))),
        ctx_(static_cast<int>(opts_.workers)),
        work_(std::in_place, ctx_.get_executor()),
        ex_(ex ? *ex : executor_type(ctx_.get_executor())) {}
  thread_pool_core(const thread_pool_core&) = delete;
  thread_pool_core& operator=(const thread_pool_core&) = delete;

  ~thread_pool_core() {
    // Only when the threads could not all be started: nothing may stay unresolved.
    for (auto& t : queue_)
      t->state().set_exception(std::make_exception_ptr(boost::system::system_error(
          make_error_code(errc::shut_down), "thread_pool destroyed with the task unfinished")));
  }

  // Starts the threads; on failure, joins those started and rethrows.
  void start() {
    std::vector<std::thread> started;
    started.reserve(opts_.workers);
    try {
      for (std::size_t i = 0; i < opts_.workers; ++i) {
        started.emplace_back([self = shared_from_this()] { self->worker_main(); });
        std::lock_guard lock(m_);
        ++live_;
      }
    } catch (...) {
      {
        std::lock_guard lock(m_);
        closed_ = true;
        work_.reset();
      }
      for (auto& t : started) t.join();
      throw;
    }
    std::lock_guard lock(m_);
    threads_ = std::move(started);
  }

  const executor_type& executor() const noexcept { return ex_; }
  std::size_t workers() const noexcept { return opts_.workers; }

  void check_open(const char* what) const {
    std::lock_guard lock(m_);
    if (closed_)
      throw std::logic_error("coproc::thread_pool \"" + opts_.name + "\": " + what +
                             " after shutdown");
  }

  void submit(task_ptr t) {
    std::unique_lock lock(m_);
    if (closed_)
      throw std::logic_error("coproc::thread_pool \"" + opts_.name + "\": submit after shutdown");
    ++stats_.submitted;
    if (broken_) {
      ++stats_.failed;
      auto e = broken_error_;
      lock.unlock();
      t->state().set_exception(std::move(e));
      return;
    }
    // Posted first, under the lock: if posting throws, nothing is queued, and the handler
    // cannot look at the queue before the task is in it. The threads keep the core alive while
    // they run the io_context's handlers; a handler left when it is destroyed is never run.
    asio::post(ctx_, [this] { run_next(); });
    queue_.push_back(std::move(t));
  }

  void shutdown(bool wait, bool cancel_futures) {
    std::deque<task_ptr> dropped;
    {
      std::lock_guard lock(m_);
      dropped = close_locked(cancel_futures);
    }
    dropped.clear();  // the callables are destroyed outside the lock
    if (!wait || on_pool_thread() || on_loop()) return;
    std::unique_lock lock(m_);
    idle_.wait(lock, [&] { return finished_locked(); });
  }

  void async_shutdown(bool cancel_futures, asio::any_completion_handler<void()> h) {
    std::deque<task_ptr> dropped;
    std::lock_guard lock(m_);
    dropped = close_locked(cancel_futures);
    if (finished_locked())
      asio::post(ex_, std::move(h));
    else
      shutdown_waiters_.push_back(std::move(h));
  }

  // The handle is going away: shut down, let the threads end once the queue and the
  // io_context's handlers are done, and join them (detach them where joining would block a
  // pool thread or the event loop).
  void release() {
    const bool may_block = !on_pool_thread() && !on_loop();
    shutdown(false, false);
    std::vector<std::thread> threads;
    {
      std::lock_guard lock(m_);
      work_.reset();
      threads = std::move(threads_);
      threads_.clear();
    }
    for (auto& t : threads) {
      if (may_block)
        t.join();
      else
        t.detach();
    }
  }

  pool_stats stats() const {
    std::lock_guard lock(m_);
    pool_stats s = stats_;
    s.running = running_;
    s.queued = 0;
    for (const auto& t : queue_) {
      if (t->state().state() == future_state_base::status::cancelled)
        ++s.cancelled;  // cancelled by its future, not yet dropped by a thread
      else
        ++s.queued;
    }
    s.workers = live_;
    return s;
  }

  // True on one of this pool's threads.
  bool on_pool_thread() const noexcept { return current() == this; }

 private:
  static thread_pool_options resolved(thread_pool_options o) {
    if (o.workers == 0) o.workers = available_cpus();
    return o;
  }

  static const thread_pool_core*& current() noexcept {
    thread_local const thread_pool_core* pool = nullptr;
    return pool;
  }

  // True on a thread that runs the completion executor (when it is one we can ask).
  bool on_loop() const noexcept {
    if (const auto* io = ex_.target<asio::io_context::executor_type>())
      return io->running_in_this_thread();
    if (const auto* tp = ex_.target<asio::thread_pool::executor_type>())
      return tp->running_in_this_thread();
    return false;
  }

  void worker_main() {
    current() = this;
    if (opts_.initializer) {
      try {
        opts_.initializer();
      } catch (...) {
        break_pool(std::current_exception());
      }
    }
    // A handler that throws (a user's completion handler on the pool's own executor) is
    // reported, and the thread goes on: the other tasks and handlers must still run.
    for (;;) {
      try {
        ctx_.run();
        break;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "coproc::thread_pool \"%s\": a handler threw: %s\n",
                     opts_.name.c_str(), e.what());
      } catch (...) {
        std::fprintf(stderr, "coproc::thread_pool \"%s\": a handler threw\n", opts_.name.c_str());
      }
    }
    current() = nullptr;
    std::lock_guard lock(m_);
    --live_;
  }

  void run_next() noexcept {
    task_ptr t;
    bool run = false;
    {
      std::lock_guard lock(m_);
      if (queue_.empty()) return;  // dropped by cancel_futures or a broken initializer
      t = std::move(queue_.front());
      queue_.pop_front();
      ++active_;
      if (t->state().set_running()) {
        ++running_;
        run = true;
      } else {
        ++stats_.cancelled;  // its future was cancelled while it waited
      }
    }
    if (run) {
      auto e = t->invoke();
      {
        std::lock_guard lock(m_);
        --running_;
        if (e)
          ++stats_.failed;
        else
          ++stats_.done;
      }
      t->resolve(std::move(e));
    }
    t.reset();  // the callable and its arguments die before shutdown(wait) may return
    std::lock_guard lock(m_);
    --active_;
    check_finished_locked();
  }

  void break_pool(std::exception_ptr why) {
    std::string what = "a non-standard exception";
    try {
      std::rethrow_exception(why);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    std::deque<task_ptr> dropped;
    {
      std::lock_guard lock(m_);
      if (broken_) return;
      broken_ = true;
      broken_error_ = std::make_exception_ptr(boost::system::system_error(
          make_error_code(errc::pool_broken),
          "thread_pool \"" + opts_.name + "\": the initializer failed: " + what));
      dropped = std::move(queue_);
      queue_.clear();
      for (auto& t : dropped) {
        if (t->state().set_exception(broken_error_))
          ++stats_.failed;
        else
          ++stats_.cancelled;
      }
      check_finished_locked();
    }
  }

  // Gives the tasks it dropped (cancelled), to be destroyed outside the lock.
  std::deque<task_ptr> close_locked(bool cancel_futures) {
    std::deque<task_ptr> dropped;
    closed_ = true;
    if (cancel_futures) {
      dropped = std::move(queue_);
      queue_.clear();
      for (auto& t : dropped)
        if (t->state().cancel()) ++stats_.cancelled;
    }
    check_finished_locked();
    return dropped;
  }

  bool finished_locked() const { return closed_ && queue_.empty() && active_ == 0; }

  void check_finished_locked() {
    if (!finished_locked()) return;
    idle_.notify_all();
    auto waiters = std::move(shutdown_waiters_);
    shutdown_waiters_.clear();
    // Posted, not called: never run a handler under the lock. (Moved out element by element:
    // Boost 1.81's any_completion_handler must not be move-assigned.)
    for (auto& h : waiters) asio::post(ex_, std::move(h));
  }

  thread_pool_options opts_;
  asio::io_context ctx_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  executor_type ex_;
  mutable std::mutex m_;
  std::condition_variable idle_;
  std::deque<task_ptr> queue_;
  std::vector<std::thread> threads_;
  std::size_t live_ = 0;     // threads started and not ended
  std::size_t active_ = 0;   // taken from the queue, not yet finished with
  std::size_t running_ = 0;  // running their callable
  bool closed_ = false;
  bool broken_ = false;
  std::exception_ptr broken_error_;
  pool_stats stats_;
  std::vector<asio::any_completion_handler<void()>> shutdown_waiters_;
};

inline std::shared_ptr<thread_pool_core> make_thread_pool_core(
    const std::optional<executor_type>& ex, thread_pool_options opts) {
  auto core = std::make_shared<thread_pool_core>(ex, std::move(opts));
  core->start();
  return core;
}

// Queues `call()` (returning R) and gives its future.
template <typename R, typename Call>
future<R> thread_pool_submit(thread_pool_core& core, Call&& call) {
  promise<R> p(core.executor());
  auto fut = p.get_future();
  core.submit(std::make_unique<thread_task_impl<R, std::decay_t<Call>>>(p.release(),
                                                                        std::forward<Call>(call)));
  return fut;
}

}  // namespace detail

/// A pool of threads. See the top of this header.
///
/// Destruction: `shutdown(true)`: queued and running tasks finish, then the threads end once the
/// handlers queued on the pool's own executor (if it has one) have run, and are joined. Called
/// on one of the pool's threads or on a thread that runs the executor (a done callback, say), the
/// destructor does not wait: the threads finish the same work and end detached. A pool built
/// without an executor takes its executor with it when its threads end: add asynchronous waits
/// and done callbacks to its futures before destroying it, or give it an executor that lives
/// longer (`get()` on a finished future needs no executor).
class thread_pool {
 public:
  using executor_type = coproc::executor_type;

  /// A pool whose futures, callbacks and map streams complete on `ex`. Starts the threads now;
  /// throws `std::system_error` when one cannot be started.
  explicit thread_pool(const executor_type& ex, thread_pool_options options = {})
      : core_(detail::make_thread_pool_core(ex, std::move(options))) {}
  /// A pool that completes them on its own threads, for blocking use (`submit(...).get()`).
  explicit thread_pool(thread_pool_options options = {})
      : core_(detail::make_thread_pool_core(std::nullopt, std::move(options))) {}
  thread_pool(thread_pool&&) noexcept = default;
  thread_pool& operator=(thread_pool&& o) noexcept {
    if (this != &o) {
      thread_pool old(std::move(*this));
      core_ = std::move(o.core_);
    }
    return *this;
  }
  ~thread_pool() {
    if (core_) core_->release();
  }

  executor_type get_executor() const { return core_->executor(); }
  /// The number of threads.
  std::size_t size() const { return core_->workers(); }

  /// Queues `fn(args...)` (with decayed copies of `args`, passed as rvalues) for a thread and
  /// gives its future: running once a thread takes it; `cancel()` works until then. What `fn`
  /// throws fails the future. Throws `std::logic_error` after `shutdown`.
  ///
  /// A task must not block on a future of a pool without an executor, its own included: `get()`
  /// on one of the pool's threads throws `std::logic_error` (it runs the futures' event loop),
  /// and a pool whose threads all wait for queued tasks would never end. Chain with a done
  /// callback, or give the pool an executor.
  template <typename F, typename... Args>
  requires(std::invocable<std::decay_t<F>, std::decay_t<Args>...>) auto submit(F&& fn,
                                                                               Args&&... args)
      -> future<std::decay_t<std::invoke_result_t<std::decay_t<F>, std::decay_t<Args>...>>> {
    using R = std::decay_t<std::invoke_result_t<std::decay_t<F>, std::decay_t<Args>...>>;
    return detail::thread_pool_submit<R>(
        *core_,
        [f = std::decay_t<F>(std::forward<F>(fn)),
         a = std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)]() mutable -> R {
          return std::apply(std::move(f), std::move(a));
        });
  }

  /// `fn(x)` for each `x` of `inputs`, as a stream of results (Python's `Executor.map`; with
  /// `ordered = false`, in completion order). Each chunk of `chunksize` inputs is one task,
  /// with its own copy of `fn` (which must be copy-constructible). The first `buffersize`
  /// chunks (default: twice the threads) are submitted at the call, the rest as results are
  /// consumed; an lvalue range is referenced (keep it alive while the stream is used), an
  /// rvalue range is moved into the stream. Throws `std::logic_error` after `shutdown`; a stream
  /// whose pool shuts down before it has submitted all its input ends with that `std::logic_error`
  /// after the results of the chunks already submitted.
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

  /// Stops taking work. `cancel_futures`: tasks no thread has taken are cancelled. `wait`:
  /// blocks until every task taken or queued has finished and resolved its future. Called on
  /// one of the pool's threads, or on a thread that runs its executor (a done callback, say),
  /// it never blocks: `wait` is ignored there.
  void shutdown(bool wait = true, bool cancel_futures = false) {
    core_->shutdown(wait, cancel_futures);
  }
  /// Shuts down and completes once every task has finished. Completion: `void()`, on the
  /// pool's executor. Cancellation: none.
  template <typename Token = default_token>
  auto async_shutdown(bool cancel_futures = false, Token&& token = {}) {
    return asio::async_initiate<Token, void()>(
        [core = core_, cancel_futures](auto handler) {
          core->async_shutdown(cancel_futures, std::move(handler));
        },
        token);
  }

  /// Counters, read together: `submitted` = `queued` + `running` + `done` + `failed` +
  /// `cancelled`. `workers` counts the threads that have not ended (they end when the pool is
  /// destroyed); `worker_restarts` is always 0.
  pool_stats stats() const { return core_->stats(); }

 private:
  template <typename F, typename ArgsTuple, typename Range, typename Convert>
  auto map_impl(F fn, Range&& inputs, map_options options, Convert convert) {
    static_assert(std::copy_constructible<F>,
                  "coproc::thread_pool::map: each chunk gets a copy of the function, which must "
                  "therefore be copy-constructible");
    using R = detail::apply_result_t<F, ArgsTuple>;
    static_assert(!std::is_void_v<R>, "coproc: map needs a function that returns a value");
    core_->check_open("map");
    if (options.buffersize == 0) options.buffersize = 2 * size();
    auto in = detail::read_lazily<ArgsTuple>(std::forward<Range>(inputs), std::move(convert));
    typename detail::map_state<R, ArgsTuple>::submitter submit = [core = core_,
                                                                  fn](std::vector<ArgsTuple> c) {
      return detail::thread_pool_submit<std::vector<R>>(
          *core, [f = fn, c = std::move(c)]() mutable {
            std::vector<R> rs;
            rs.reserve(c.size());
            for (auto& a : c) rs.push_back(std::apply(f, std::move(a)));
            return rs;
          });
    };
    auto state = std::make_shared<detail::map_state<R, ArgsTuple>>(
        get_executor(), std::move(in.pull), std::move(submit), std::move(options), in.total);
    return result_stream<R>(std::move(state));
  }

  std::shared_ptr<detail::thread_pool_core> core_;
};

}  // namespace coproc
