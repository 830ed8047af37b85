#include <coproc/wait.hpp>

#include <boost/asio/append.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/system_executor.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <stdexcept>

namespace coproc {

namespace detail {

namespace {

using clock = std::chrono::steady_clock;

// Completions are posted, never run inline: the caller may hold locks or be a done callback.
template <typename Handler, typename... Args>
void post_completion(const executor_type& ex, Handler h, Args... args) {
  asio::post(ex, asio::append(std::move(h), std::move(args)...));
}

void check_not_on_loop(const executor_type& ex, const char* what) {
  if (const auto* io = ex.target<asio::io_context::executor_type>())
    if (io->running_in_this_thread())
      throw std::logic_error(std::string(what) +
                             ": a blocking wait on a thread that runs the futures' io_context "
                             "would never end (use the asynchronous form instead)");
}

bool satisfied(const future_states& states, return_when when) {
  std::size_t done = 0;
  for (const auto& s : states) {
    if (!s->done()) continue;
    ++done;
    if (when == return_when::first_completed) return true;
    if (when == return_when::first_exception && s->exception()) return true;
  }
  return done == states.size();
}

wait_result split_of(const future_states& states) {
  wait_result r;
  for (std::size_t i = 0; i < states.size(); ++i)
    (states[i]->done() ? r.done : r.not_done).push_back(i);
  return r;
}

// A timer for an absolute deadline that any thread may arm and disarm: the timer itself is
// only touched on a strand, and requests are posted there in the order they are made (make
// them under the owner's lock). A stale expiry is harmless: the deadline is absolute, so the
// timer firing means it has passed.
class deadline_timer {
 public:
  deadline_timer(const executor_type& ex, clock::time_point deadline)
      : strand_(asio::make_strand(ex)), timer_(strand_), deadline_(deadline) {}

  clock::time_point deadline() const noexcept { return deadline_; }

  // `owner` keeps this object alive until the request has run; `fn` runs on the strand once
  // the deadline has passed, unless `disarm` came first.
  template <typename Owner, typename Fn>
  void arm(std::shared_ptr<Owner> owner, Fn fn) {
    asio::post(strand_, [this, owner = std::move(owner), fn = std::move(fn)]() mutable {
      timer_.expires_at(deadline_);
      timer_.async_wait([fn = std::move(fn)](error_code ec) mutable {
        if (!ec) fn();
      });
    });
  }
  template <typename Owner>
  void disarm(std::shared_ptr<Owner> owner) {
    asio::post(strand_, [this, owner = std::move(owner)] { timer_.cancel(); });
  }

 private:
  asio::strand<executor_type> strand_;
  asio::steady_timer timer_;
  clock::time_point deadline_;
};

// --- as_completed -------------------------------------------------------------------------

class as_completed_impl final : public as_completed_core,
                                public std::enable_shared_from_this<as_completed_impl> {
 public:
  as_completed_impl(future_states states, as_completed_options options)
      : ex_(executor_of(states)),
        states_(std::move(states)),
        total_(states_.size()),
        progress_(std::move(options.progress)),
        seen_(total_, false) {
    if (options.timeout && total_ > 0) timer_.emplace(ex_, clock::now() + *options.timeout);
  }

  void watch() {
    {
      // Those done now come first, in input order.
      std::lock_guard lock(m_);
      collect_done();
    }
    std::weak_ptr<as_completed_impl> weak = shared_from_this();
    for (std::size_t i = 0; i < states_.size(); ++i)
      states_[i]->add_callback([weak, i] {
        if (auto self = weak.lock()) self->on_done(i);
      });
  }

  const executor_type& executor() const noexcept override { return ex_; }

  void async_next(next_handler h) override {
    std::unique_lock lock(m_);
    if (pending_ || in_next_)
      throw std::logic_error("coproc::as_completed_stream: another next is in progress");
    if (!ready_.empty()) {
      const std::size_t i = pop();
      lock.unlock();
      return post_completion(ex_, std::move(h), error_code{}, std::optional<std::size_t>(i));
    }
    if (delivered_ == total_) {
      lock.unlock();
      return post_completion(ex_, std::move(h), error_code{}, std::optional<std::size_t>());
    }
    if (expired()) {
      // Past the deadline a done future is handed out even before its callback has run.
      std::optional<std::size_t> i;
      error_code ec = make_error_code(errc::timed_out);
      if (collect_done()) {
        i = pop();
        ec = {};
      }
      lock.unlock();
      return post_completion(ex_, std::move(h), ec, i);
    }
    const std::uint64_t id = ++next_id_;
    auto slot = asio::get_associated_cancellation_slot(h);
    if (slot.is_connected()) {
      std::weak_ptr<as_completed_impl> weak = shared_from_this();
      slot.assign([weak, id](asio::cancellation_type) {
        if (auto self = weak.lock()) self->abort(id);
      });
    }
    pending_.emplace(pending{id, std::move(h)});
    if (timer_) {
      std::weak_ptr<as_completed_impl> weak = shared_from_this();
      timer_->arm(shared_from_this(), [weak] {
        if (auto self = weak.lock()) self->on_deadline();
      });
    }
  }

  std::optional<std::size_t> next() override {
    std::unique_lock lock(m_);
    bool checked = false;
    for (;;) {
      if (!ready_.empty()) return pop();
      if (delivered_ == total_) return std::nullopt;
      if (pending_ || in_next_)
        throw std::logic_error("coproc::as_completed_stream: another next is in progress");
      if (expired()) {
        if (collect_done()) continue;
        throw boost::system::system_error(make_error_code(errc::timed_out),
                                          "as_completed_stream::next");
      }
      if (!checked) {
        lock.unlock();
        check_not_on_loop(ex_, "coproc::as_completed_stream::next");
        lock.lock();
        checked = true;
        continue;
      }
      in_next_ = true;
      if (timer_)
        cv_.wait_until(lock, timer_->deadline());
      else
        cv_.wait(lock);
      in_next_ = false;
    }
  }

  std::size_t remaining() const override {
    std::lock_guard lock(m_);
    return total_ - delivered_;
  }

  void close() override {
    std::unique_lock lock(m_);
    if (auto h = take_pending())
      post_completion(ex_, std::move(*h), error_code(asio::error::operation_aborted),
                      std::optional<std::size_t>());
  }

 private:
  struct pending {
    std::uint64_t id;
    next_handler handler;
  };

  // All under the lock.
  std::size_t pop() {
    const std::size_t i = ready_.front();
    ready_.pop_front();
    ++delivered_;
    return i;
  }
  bool expired() {
    if (!expired_ && timer_ && clock::now() >= timer_->deadline()) expired_ = true;
    return expired_;
  }
  // Queues the futures that are done but whose callbacks have not run yet; true if any.
  bool collect_done() {
    bool any = false;
    for (std::size_t i = 0; i < states_.size(); ++i) {
      if (seen_[i] || !states_[i]->done()) continue;
      seen_[i] = true;
      ready_.push_back(i);
      any = true;
    }
    return any;
  }
  std::optional<next_handler> take_pending() {
    if (!pending_) return std::nullopt;
    auto h = std::move(pending_->handler);
    pending_.reset();
    if (timer_) timer_->disarm(shared_from_this());
    return h;
  }

  void on_done(std::size_t i) {
    {
      std::unique_lock lock(m_);
      if (!seen_[i]) {
        seen_[i] = true;
        ready_.push_back(i);
        if (auto h = take_pending()) {
          const std::size_t next = pop();
          post_completion(ex_, std::move(*h), error_code{}, std::optional<std::size_t>(next));
        }
        cv_.notify_all();
      }
    }
    if (progress_) {
      // One call at a time, so `done` counts up in order whatever thread runs this.
      std::lock_guard lock(progress_m_);
      ++progress_done_;
      progress_(progress_done_, total_);
    }
  }

  void on_deadline() {
    std::unique_lock lock(m_);
    expired_ = true;
    if (auto h = take_pending())
      post_completion(ex_, std::move(*h), error_code(make_error_code(errc::timed_out)),
                      std::optional<std::size_t>());
    cv_.notify_all();
  }

  void abort(std::uint64_t id) {
    std::unique_lock lock(m_);
    if (!pending_ || pending_->id != id) return;
    // The slot's handler is running: the slot is left for the handler's owner to clear.
    if (auto h = take_pending())
      post_completion(ex_, std::move(*h), error_code(asio::error::operation_aborted),
                      std::optional<std::size_t>());
  }

  const executor_type ex_;
  const future_states states_;
  const std::size_t total_;
  const std::function<void(std::size_t, std::size_t)> progress_;
  std::optional<deadline_timer> timer_;

  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::size_t> ready_;
  std::vector<bool> seen_;  // queued (or handed out) already
  std::size_t delivered_ = 0;
  bool expired_ = false;
  bool in_next_ = false;  // a blocking next() waits
  std::optional<pending> pending_;
  std::uint64_t next_id_ = 0;

  std::mutex progress_m_;
  std::size_t progress_done_ = 0;
};

// --- async_wait ---------------------------------------------------------------------------

class wait_op final : public std::enable_shared_from_this<wait_op> {
 public:
  wait_op(future_states states, return_when when, wait_handler h)
      : ex_(executor_of(states)), states_(std::move(states)), when_(when), handler_(std::move(h)) {}

  void start(std::optional<clock::duration> timeout) {
    std::unique_lock lock(m_);
    if (satisfied(states_, when_) || (timeout && *timeout <= clock::duration::zero()))
      return finish(lock, {});
    // Kept alive by itself until it completes; the futures hold only weak references.
    self_ = shared_from_this();
    std::weak_ptr<wait_op> weak = self_;
    auto slot = asio::get_associated_cancellation_slot(handler_);
    if (slot.is_connected())
      slot.assign([weak](asio::cancellation_type) {
        if (auto self = weak.lock()) self->complete(asio::error::operation_aborted);
      });
    if (timeout) {
      timer_.emplace(ex_, clock::now() + *timeout);
      timer_->arm(self_, [weak] {
        if (auto self = weak.lock()) self->complete({});
      });
    }
    lock.unlock();
    for (const auto& s : states_)
      if (!s->done())
        s->add_callback([weak] {
          if (auto self = weak.lock()) self->check();
        });
    check();  // one may have finished before its callback was in place
  }

 private:
  void check() {
    if (satisfied(states_, when_)) complete({});
  }

  void complete(error_code ec) {
    std::unique_lock lock(m_);
    finish(lock, ec);
  }

  void finish(std::unique_lock<std::mutex>& lock, error_code ec) {
    if (!handler_) return;
    auto h = std::move(handler_);
    handler_ = nullptr;
    if (timer_) timer_->disarm(shared_from_this());
    auto self = std::move(self_);
    lock.unlock();
    post_completion(ex_, std::move(h), ec, split_of(states_));
  }

  const executor_type ex_;
  const future_states states_;
  const return_when when_;
  std::mutex m_;
  wait_handler handler_;
  std::optional<deadline_timer> timer_;
  std::shared_ptr<wait_op> self_;
};

}  // namespace

executor_type executor_of(const future_states& states) {
  if (states.empty()) return asio::system_executor();
  return states.front()->executor();
}

std::shared_ptr<as_completed_core> as_completed_core::create(future_states states,
                                                             as_completed_options options) {
  auto core = std::make_shared<as_completed_impl>(std::move(states), std::move(options));
  core->watch();
  return core;
}

wait_result wait_states(const future_states& states, return_when when,
                        std::optional<std::chrono::steady_clock::duration> timeout) {
  std::optional<clock::time_point> deadline;
  if (timeout) deadline = clock::now() + *timeout;
  if (satisfied(states, when) || (deadline && clock::now() >= *deadline)) return split_of(states);
  for (const auto& s : states) check_not_on_loop(s->executor(), "coproc::wait");

  // The done callbacks only wake this thread; the condition is read from the futures.
  struct waker {
    std::mutex m;
    std::condition_variable cv;
    std::uint64_t generation = 0;
  };
  auto w = std::make_shared<waker>();
  std::weak_ptr<waker> weak = w;
  for (const auto& s : states)
    if (!s->done())
      s->add_callback([weak] {
        if (auto w = weak.lock()) {
          std::lock_guard lock(w->m);
          ++w->generation;
          w->cv.notify_all();
        }
      });
  for (;;) {
    std::unique_lock lock(w->m);
    const std::uint64_t seen = w->generation;
    lock.unlock();
    if (satisfied(states, when)) break;
    lock.lock();
    const auto woken = [&] { return w->generation != seen; };
    if (!deadline)
      w->cv.wait(lock, woken);
    else if (!w->cv.wait_until(lock, *deadline, woken))
      break;
  }
  return split_of(states);
}

void start_wait(future_states states, return_when when,
                std::optional<std::chrono::steady_clock::duration> timeout, wait_handler h) {
  std::make_shared<wait_op>(std::move(states), when, std::move(h))->start(timeout);
}

asio::awaitable<std::size_t> when_any_states(future_states states) {
  if (states.empty()) throw std::invalid_argument("coproc::when_any: no futures");
  auto core = as_completed_core::create(std::move(states), {});
  auto op = asio::async_initiate<const asio::use_awaitable_t<>,
                                 void(error_code, std::optional<std::size_t>)>(
      [core](auto handler) { core->async_next(std::move(handler)); }, asio::use_awaitable);
  const auto i = co_await std::move(op);
  co_return *i;
}

}  // namespace detail

future<exit_status> make_future(child& c) {
  promise<exit_status> p(c.get_executor());
  p.set_running();
  auto f = p.get_future();
  c.async_wait([p = std::move(p)](error_code ec, exit_status s) mutable {
    if (ec)
      p.set_exception(std::make_exception_ptr(boost::system::system_error(ec, "child wait")));
    else
      p.set_value(s);
  });
  return f;
}

}  // namespace coproc
