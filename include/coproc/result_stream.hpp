// `result_stream<R>`: the results of a pool's `map`, one at a time, as an awaitable stream and as
// a blocking input range. The first `buffersize` chunks are submitted when the stream is made;
// after that the input is consumed lazily, a chunk for each one consumed, so an unbounded input
// range works.
#pragma once

#include <coproc/config.hpp>
#include <coproc/error.hpp>
#include <coproc/future.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc {

/// Settings of `map`, `starmap` and their relatives.
struct map_options {
  /// Inputs per task: larger chunks amortise dispatch for small functions.
  std::size_t chunksize = 1;
  /// True: results in input order. False: in completion order (Python's `imap_unordered`).
  bool ordered = true;
  /// Chunks submitted ahead of the consumer; 0: twice the number of workers.
  std::size_t buffersize = 0;
  /// The time allowed from the `map` call to each result (Python's `Executor.map(timeout=)`):
  /// past it, the next wait fails with `errc::timed_out`; the work already submitted goes on.
  std::optional<std::chrono::steady_clock::duration> timeout{};
  /// Called on the pool's executor after each chunk completes: inputs done so far, and the
  /// total: known from the start for a sized input range, else once the input is exhausted
  /// (nullopt before).
  std::function<void(std::size_t done, std::optional<std::size_t> total)> progress{};
};

namespace detail {

// A map's input, read lazily. `pull` fills a chunk with up to n converted elements and says
// whether more remain; `total` is the size of a sized range. The range is owned when `inputs`
// is an rvalue, referenced when it is an lvalue; begin() is called on the first pull.
template <typename Arg>
struct map_input {
  std::function<bool(std::vector<Arg>&, std::size_t)> pull;
  std::optional<std::size_t> total;
};

template <typename Arg, typename Range, typename Convert>
map_input<Arg> read_lazily(Range&& inputs, Convert convert) {
  using View = std::views::all_t<Range>;
  struct source {
    View view;
    std::ranges::iterator_t<View> it;
    bool started = false;
  };
  auto src = std::make_shared<source>(source{std::views::all(std::forward<Range>(inputs)), {}});
  map_input<Arg> in;
  if constexpr (std::ranges::sized_range<View>) in.total = std::ranges::size(src->view);
  in.pull = [src, convert = std::move(convert)](std::vector<Arg>& c, std::size_t n) {
    if (!src->started) {
      src->it = std::ranges::begin(src->view);
      src->started = true;
    }
    while (c.size() < n && src->it != std::ranges::end(src->view)) {
      c.push_back(convert(*src->it));
      ++src->it;
    }
    return src->it != std::ranges::end(src->view);
  };
  return in;
}

// The engine behind result_stream: pulls chunks from the input, submits them, and hands out
// results in order (or as chunks complete). Shared by the process and thread pools.
template <typename R, typename Arg>
class map_state : public std::enable_shared_from_this<map_state<R, Arg>> {
 public:
  using chunk = std::vector<Arg>;
  // Fills `c` with up to n inputs; false when the input is exhausted (c may still hold some).
  using puller = std::function<bool(chunk& c, std::size_t n)>;
  using submitter = std::function<future<std::vector<R>>(chunk c)>;

  map_state(executor_type ex, puller pull, submitter submit, map_options opts,
            std::optional<std::size_t> total = std::nullopt)
      : total_(total),
        ex_(std::move(ex)),
        pull_(std::move(pull)),
        submit_(std::move(submit)),
        opts_(std::move(opts)) {
    if (opts_.chunksize == 0) opts_.chunksize = 1;
    if (opts_.timeout) deadline_ = std::chrono::steady_clock::now() + *opts_.timeout;
  }

  // Submits chunks until `buffersize` are outstanding or the input ends. Called under no lock
  // by the consumer side only (pulling is not concurrent).
  void fill() {
    for (;;) {
      {
        std::lock_guard lock(m_);
        if (input_done_ || outstanding_ >= opts_.buffersize) return;
      }
      chunk c;
      bool more = true;
      try {
        more = pull_(c, opts_.chunksize);
      } catch (...) {
        std::lock_guard lock(m_);
        input_done_ = true;
        input_error_ = std::current_exception();
        return;
      }
      if (c.empty()) {
        std::lock_guard lock(m_);
        input_done_ = true;
        total_ = pulled_;
        return;
      }
      const std::size_t n = c.size();
      future<std::vector<R>> f;
      try {
        f = submit_(std::move(c));
      } catch (...) {
        std::lock_guard lock(m_);
        input_done_ = true;
        input_error_ = std::current_exception();
        return;
      }
      std::size_t index;
      {
        std::lock_guard lock(m_);
        index = next_index_++;
        slots_.push_back({index, n, f, false});
        ++outstanding_;
        pulled_ += n;
        if (!more) {
          input_done_ = true;
          total_ = pulled_;
        }
      }
      std::weak_ptr<map_state> weak = this->shared_from_this();
      f.add_done_callback([weak, index] {
        if (auto s = weak.lock()) s->chunk_done(index);
      });
      if (!more) return;
    }
  }

  enum class wake { ready, timed_out, aborted };

  struct slot {
    std::size_t index;
    std::size_t count;
    future<std::vector<R>> fut;
    bool done;
  };

  void chunk_done(std::size_t index) {
    std::function<void(std::size_t, std::optional<std::size_t>)> progress;
    std::size_t done_inputs;
    std::optional<std::size_t> total;
    std::function<void()> waiter;
    {
      std::lock_guard lock(m_);
      for (auto& s : slots_)
        if (s.index == index) {
          s.done = true;
          done_inputs_ += s.count;
        }
      done_inputs = done_inputs_;
      total = total_;
      progress = opts_.progress;
      if (ready_locked()) waiter = std::move(waiter_);
    }
    cv_.notify_all();
    if (progress) run_callback([&] { progress(done_inputs, total); });
    if (waiter) asio::post(ex_, std::move(waiter));
  }

  // True when next() can answer without waiting. Caller holds m_.
  bool ready_locked() const {
    if (!buffered_.empty()) return true;
    if (slots_.empty()) return input_done_;
    if (opts_.ordered) return slots_.front().done;
    for (const auto& s : slots_)
      if (s.done) return true;
    return false;
  }

  // Takes the next result if one is ready: value, end (nullopt), or throws. Caller holds m_.
  // `ready` false: nothing to take yet.
  std::optional<R> take_locked(bool& ready) {
    ready = true;
    if (!buffered_.empty()) {
      R r = std::move(buffered_.front());
      buffered_.pop_front();
      return r;
    }
    if (failed_) std::rethrow_exception(failed_);
    auto it = slots_.begin();
    if (!opts_.ordered)
      while (it != slots_.end() && !it->done) ++it;
    if (it == slots_.end() || !it->done) {
      if (slots_.empty() && input_done_) {
        if (input_error_) std::rethrow_exception(std::exchange(input_error_, nullptr));
        return std::nullopt;
      }
      ready = false;
      return std::nullopt;
    }
    auto f = std::move(it->fut);
    slots_.erase(it);
    --outstanding_;
    try {
      auto values = f.get();
      for (auto& v : values) buffered_.push_back(std::move(v));
    } catch (...) {
      failed_ = std::current_exception();  // Python: the stream ends at the failed chunk
      slots_.clear();
      buffered_.clear();
      input_done_ = true;
      std::rethrow_exception(failed_);
    }
    return take_locked(ready);
  }

  std::optional<std::chrono::steady_clock::time_point> deadline() const { return deadline_; }

  // Blocking next.
  std::optional<R> next_blocking() {
    fill();
    std::unique_lock lock(m_);
    for (;;) {
      bool ready;
      auto r = take_locked(ready);
      if (ready) {
        lock.unlock();
        fill();
        return r;
      }
      if (deadline_) {
        if (!cv_.wait_until(lock, *deadline_, [&] { return ready_locked(); }))
          throw boost::system::system_error(make_error_code(errc::timed_out), "map");
      } else {
        cv_.wait(lock, [&] { return ready_locked(); });
      }
    }
  }

  // Non-blocking next: nullopt while nothing is ready; else what next_blocking would give.
  std::optional<std::optional<R>> try_next() {
    std::unique_lock lock(m_);
    bool ready;
    auto r = take_locked(ready);
    if (!ready) return std::nullopt;
    lock.unlock();
    fill();
    return std::optional<std::optional<R>>(std::in_place, std::move(r));
  }

  // Async next: completes `h` with the next result (or nullopt at the end, or an exception).
  void async_next(asio::any_completion_handler<void(std::exception_ptr, std::optional<R>)> h) {
    fill();
    auto self = this->shared_from_this();
    std::unique_lock lock(m_);
    bool ready = false;
    std::optional<R> r;
    std::exception_ptr e;
    try {
      r = take_locked(ready);
    } catch (...) {
      e = std::current_exception();
    }
    if (ready || e) {
      lock.unlock();
      asio::post(ex_, [self, h = std::move(h), e, r = std::move(r)]() mutable {
        self->fill();
        auto hex = asio::get_associated_executor(h, self->ex_);
        asio::dispatch(hex, asio::append(std::move(h), e, std::move(r)));
      });
      return;
    }
    // Wait for a chunk: the waiter re-runs async_next; a deadline timer and the handler's
    // cancellation slot race it, and whichever comes first takes the handler.
    auto timer = deadline_ ? std::make_shared<asio::steady_timer>(ex_, *deadline_) : nullptr;
    auto cancel_slot = asio::get_associated_cancellation_slot(h);
    auto shared = std::make_shared<std::optional<decltype(h)>>(std::move(h));
    std::weak_ptr<map_state> weak = self;
    auto fire = [weak, shared, timer](wake why) {
      auto self = weak.lock();
      if (!self) return;
      std::optional<decltype(h)> handler;
      {
        std::lock_guard lock(self->m_);
        if (!*shared) return;
        handler.swap(*shared);
        self->waiter_ = nullptr;
      }
      if (timer) timer->cancel();
      if (why == wake::ready) return self->async_next(std::move(*handler));
      const error_code ec = why == wake::timed_out ? make_error_code(errc::timed_out)
                                                   : error_code(asio::error::operation_aborted);
      // Posted: a cancellation arrives inside the slot's handler, which must not complete
      // the operation (and so clear the slot) while it runs.
      asio::post(self->ex_, [self, h = std::move(*handler), ec]() mutable {
        auto hex = asio::get_associated_executor(h, self->ex_);
        asio::dispatch(hex,
                       asio::append(std::move(h),
                                    std::make_exception_ptr(boost::system::system_error(ec, "map")),
                                    std::optional<R>{}));
      });
    };
    waiter_ = [fire] { fire(wake::ready); };
    lock.unlock();
    if (cancel_slot.is_connected())
      cancel_slot.assign([fire](asio::cancellation_type) { fire(wake::aborted); });
    if (timer)
      timer->async_wait([fire](error_code ec) {
        if (!ec) fire(wake::timed_out);
      });
  }

  // Every result ready now (at least one; none at the end), in one completion.
  void async_next_batch(asio::any_completion_handler<void(std::exception_ptr, std::vector<R>)> h) {
    auto self = this->shared_from_this();
    auto hex = asio::get_associated_executor(h, ex_);
    auto cancel_slot = asio::get_associated_cancellation_slot(h);
    async_next(asio::bind_cancellation_slot(
        cancel_slot, asio::bind_executor(hex, [self, h = std::move(h)](std::exception_ptr e,
                                                                       std::optional<R> r) mutable {
          std::vector<R> v;
          if (!e && r) {
            v.push_back(std::move(*r));
            std::lock_guard lock(self->m_);
            for (auto& x : self->buffered_) v.push_back(std::move(x));
            self->buffered_.clear();
          }
          std::move(h)(e, std::move(v));
        })));
  }

  const executor_type& executor() const { return ex_; }

 private:
  std::optional<std::size_t> total_;  // known at the start for a sized input
  executor_type ex_;
  puller pull_;
  submitter submit_;
  map_options opts_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<slot> slots_;
  std::deque<R> buffered_;
  std::size_t next_index_ = 0;
  std::size_t outstanding_ = 0;
  std::size_t pulled_ = 0;
  std::size_t done_inputs_ = 0;
  bool input_done_ = false;
  std::exception_ptr input_error_;
  std::exception_ptr failed_;
  std::function<void()> waiter_;  // (Boost 1.81's any_completion_handler cannot be move-assigned)
};

}  // namespace detail

/// The results of a `map`: in input order (or completion order with `ordered = false`).
///
/// - `co_await s.async_next()` gives the next result, or nullopt after the last one; a task's
///   exception is rethrown at its position and ends the stream (as Python's `map`); past the
///   `timeout` of `map_options` it throws `system_error(errc::timed_out)`.
/// - `s.next()` is the blocking form, and `for (auto& r : s)` iterates blocking.
/// Destroying the stream stops submitting input; chunks already submitted still run.
template <typename R>
class result_stream {
 public:
  using value_type = R;
  using next_signature = void(std::exception_ptr, std::optional<R>);
  using batch_signature = void(std::exception_ptr, std::vector<R>);

  result_stream() = default;
  template <typename Arg>
  explicit result_stream(std::shared_ptr<detail::map_state<R, Arg>> s)
      : next_async_(
            [s](asio::any_completion_handler<next_signature> h) { s->async_next(std::move(h)); }),
        next_batch_([s](asio::any_completion_handler<batch_signature> h) {
          s->async_next_batch(std::move(h));
        }),
        next_blocking_([s] { return s->next_blocking(); }),
        try_next_([s] { return s->try_next(); }),
        ex_(s->executor()) {
    s->fill();  // the work starts now, as Python's map does: up to `buffersize` chunks
  }

  /// The next result. Completion: `void(std::exception_ptr, std::optional<R>)`. Cancellation:
  /// per-operation, all types: the wait ends with `system_error(asio::error::operation_aborted)`
  /// and loses no result (the next call gets it); the stream stays usable. With the default
  /// token (`use_awaitable`), a result that is already buffered is returned without a trip
  /// through the event loop; a coroutine draining a ready chunk so runs at the blocking rate.
  template <typename Token = default_token>
  auto async_next(Token&& token = {}) {
    if constexpr (std::is_same_v<std::decay_t<Token>, asio::use_awaitable_t<>>)
      return next_awaitable();
    else
      return asio::async_initiate<Token, next_signature>(
          [this](auto handler) { next_async_(std::move(handler)); }, token);
  }
  /// Every result that is ready, at least one, in one completion (an empty vector after the
  /// last): for small results, one wakeup per chunk instead of one per result. Completion:
  /// `void(std::exception_ptr, std::vector<R>)`; errors and cancellation as `async_next`.
  template <typename Token = default_token>
  auto async_next_batch(Token&& token = {}) {
    return asio::async_initiate<Token, batch_signature>(
        [this](auto handler) { next_batch_(std::move(handler)); }, token);
  }
  /// Blocking next (needs the pool's event loop running on another thread).
  std::optional<R> next() { return next_blocking_(); }

  executor_type get_executor() const { return ex_; }

  /// A blocking input iterator over the remaining results.
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = R;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(result_stream* s) : s_(s) { ++*this; }
    R& operator*() { return *current_; }
    iterator& operator++() {
      current_ = s_->next();
      if (!current_) s_ = nullptr;
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(const iterator& o) const { return s_ == o.s_; }

   private:
    result_stream* s_ = nullptr;
    std::optional<R> current_;
  };
  iterator begin() { return iterator(this); }
  iterator end() { return iterator(); }

 private:
  std::function<void(asio::any_completion_handler<next_signature>)> next_async_;
  std::function<void(asio::any_completion_handler<batch_signature>)> next_batch_;
  std::function<std::optional<R>()> next_blocking_;
  std::function<std::optional<std::optional<R>>()> try_next_;
  executor_type ex_;

  asio::awaitable<std::optional<R>> next_awaitable() {
    if (auto r = try_next_()) co_return std::move(*r);
    co_return co_await asio::async_initiate<const asio::use_awaitable_t<>&, next_signature>(
        [this](auto handler) { next_async_(std::move(handler)); }, asio::use_awaitable);
  }
};

}  // namespace coproc
