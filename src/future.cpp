#include <coproc/future.hpp>

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>

#include <cxxabi.h>
#include <cstdio>
#include <cstdlib>
#include <typeinfo>

namespace coproc::detail {

namespace {

bool is_done(future_state_base::status s) {
  return s == future_state_base::status::finished || s == future_state_base::status::cancelled;
}

struct deferred_waiter {
  executor_type ex;
  asio::any_completion_handler<void(error_code)> handler;
  error_code ec;
};
struct deferred_callback {
  executor_type ex;
  std::function<void()> fn;
};

// The completions a thread's active completion_batch holds back.
struct batch_state {
  bool active = false;
  std::vector<deferred_waiter> waiters;
  std::vector<deferred_callback> callbacks;
  std::vector<std::shared_ptr<const future_state_base>> sleepers;  // states to notify
};
thread_local batch_state tls_batch;

void complete_waiter(const executor_type& ex, asio::any_completion_handler<void(error_code)> h,
                     error_code ec) {
  if (tls_batch.active) {
    tls_batch.waiters.push_back({ex, std::move(h), ec});
    return;
  }
  // Posted, never run inline: the resolving code may hold locks or be deep in a read handler.
  asio::post(ex, asio::append(std::move(h), ec));
}

void complete_callback(const executor_type& ex, std::function<void()> fn) {
  if (tls_batch.active) {
    tls_batch.callbacks.push_back({ex, std::move(fn)});
    return;
  }
  asio::post(ex, [fn = std::move(fn)] { run_callback(fn); });
}

// Completes a batch's handlers: dispatched when `inline_ok`, else posted. Once one throws, the
// rest are posted, and the exception goes on.
void release_batch(bool inline_ok) {
  auto waiters = std::move(tls_batch.waiters);
  auto callbacks = std::move(tls_batch.callbacks);
  auto sleepers = std::move(tls_batch.sleepers);
  tls_batch.waiters.clear();
  tls_batch.callbacks.clear();
  tls_batch.sleepers.clear();
  tls_batch.active = false;
  for (auto& s : sleepers) s->wake_sleepers();
  std::size_t wi = 0, ci = 0;
  try {
    for (; wi < waiters.size(); ++wi) {
      auto& w = waiters[wi];
      if (inline_ok)
        asio::dispatch(w.ex, asio::append(std::move(w.handler), w.ec));
      else
        asio::post(w.ex, asio::append(std::move(w.handler), w.ec));
    }
    for (; ci < callbacks.size(); ++ci) {
      auto& c = callbacks[ci];
      auto run = [fn = std::move(c.fn)] { run_callback(fn); };
      if (inline_ok)
        asio::dispatch(c.ex, std::move(run));
      else
        asio::post(c.ex, std::move(run));
    }
  } catch (...) {
    if (wi < waiters.size())
      ++wi;
    else
      ++ci;
    for (; wi < waiters.size(); ++wi)
      asio::post(waiters[wi].ex, asio::append(std::move(waiters[wi].handler), waiters[wi].ec));
    for (; ci < callbacks.size(); ++ci)
      asio::post(callbacks[ci].ex, [fn = std::move(callbacks[ci].fn)] { run_callback(fn); });
    throw;
  }
}

}  // namespace

bool future_state_base::set_running() {
  std::lock_guard lock(m_);
  if (status_ != status::pending) return status_ == status::running;
  status_ = status::running;
  return true;
}

bool future_state_base::set_exception(std::exception_ptr e) {
  return finish([&] { error_ = std::move(e); });
}

bool future_state_base::cancel() {
  std::unique_lock lock(m_);
  if (status_ == status::cancelled) return true;
  if (status_ != status::pending) return false;
  status_ = status::cancelled;
  resolve(lock);
  return true;
}

future_state_base::status future_state_base::state() const {
  std::lock_guard lock(m_);
  return status_;
}

bool future_state_base::done() const { return is_done(state()); }

std::exception_ptr future_state_base::exception() const {
  std::lock_guard lock(m_);
  return status_ == status::finished ? error_ : nullptr;
}

bool future_state_base::resolve(std::unique_lock<std::mutex>& lock) {
  auto waiters = std::move(waiters_);
  auto callbacks = std::move(callbacks_);
  waiters_.clear();
  callbacks_.clear();
  const bool sleepers = sleepers_ > 0;
  lock.unlock();
  if (sleepers) {
    // In a batch, the resolver may still hold its own lock: a thread woken now would only
    // block on it (for instance to submit its next task).
    if (tls_batch.active)
      tls_batch.sleepers.push_back(shared_from_this());
    else
      wake_sleepers();
  }
  for (auto& w : waiters) {
    auto slot = asio::get_associated_cancellation_slot(w.handler);
    if (slot.is_connected()) slot.clear();
    complete_waiter(ex_, std::move(w.handler), {});
  }
  for (auto& c : callbacks) complete_callback(ex_, std::move(c));
  return true;
}

void future_state_base::add_waiter(asio::any_completion_handler<void(error_code)> h) {
  std::unique_lock lock(m_);
  if (is_done(status_)) {
    lock.unlock();
    complete_waiter(ex_, std::move(h), {});
    return;
  }
  const std::uint64_t id = ++next_waiter_;
  auto slot = asio::get_associated_cancellation_slot(h);
  if (slot.is_connected()) {
    std::weak_ptr<future_state_base> weak = weak_from_this();
    slot.assign([weak, id](asio::cancellation_type) {
      if (auto s = weak.lock()) s->cancel_waiter(id);
    });
  }
  waiters_.push_back({id, std::move(h)});
}

void future_state_base::cancel_waiter(std::uint64_t id) {
  std::unique_lock lock(m_);
  for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
    if (it->id != id) continue;
    auto h = std::move(it->handler);
    // Not erase(): it move-assigns, and Boost 1.81's any_completion_handler move assignment
    // wraps the handler in itself without end.
    if (&*it != &waiters_.back()) {
      it->id = waiters_.back().id;
      it->handler.swap(waiters_.back().handler);
    }
    waiters_.pop_back();
    lock.unlock();
    // The slot's handler is running: clearing it here would destroy it under our feet.
    complete_waiter(ex_, std::move(h), asio::error::operation_aborted);
    return;
  }
}

void future_state_base::add_callback(std::function<void()> fn) {
  std::unique_lock lock(m_);
  if (!is_done(status_)) {
    callbacks_.push_back(std::move(fn));
    return;
  }
  lock.unlock();
  complete_callback(ex_, std::move(fn));
}

void future_state_base::wake_sleepers() const {
  // No lock needed: a sleeper counted by resolve() was already inside cv_.wait.
  cv_.notify_all();
}

completion_batch::completion_batch() noexcept : owner_(!tls_batch.active) {
  if (owner_) tls_batch.active = true;
}

completion_batch::~completion_batch() {
  if (!owner_) return;
  try {
    release_batch(false);
  } catch (...) {  // posting failed (out of memory): nothing more can be done here
  }
}

void completion_batch::flush() {
  if (!owner_) return;
  owner_ = false;
  release_batch(true);
}

void future_state_base::check_not_on_loop() const {
  if (const auto* io = ex_.target<asio::io_context::executor_type>())
    if (io->running_in_this_thread())
      throw std::logic_error(
          "coproc::future: a blocking wait on a thread that runs the future's io_context would "
          "never end (co_await the future, or use async_wait, instead)");
}

bool future_state_base::wait_until(
    std::optional<std::chrono::steady_clock::time_point> deadline) const {
  std::unique_lock lock(m_);
  if (is_done(status_)) return true;
  // Under the lock: a pending future keeps its executor's owner alive, a resolved one may not.
  check_not_on_loop();
  ++sleepers_;
  struct count {
    unsigned& n;
    ~count() { --n; }
  } counted{sleepers_};
  if (!deadline) {
    cv_.wait(lock, [&] { return is_done(status_); });
    return true;
  }
  return cv_.wait_until(lock, *deadline, [&] { return is_done(status_); });
}

void run_callback(const std::function<void()>& fn) noexcept {
  try {
    fn();
  } catch (const std::exception& e) {
    int st = 0;
    char* name = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &st);
    std::fprintf(stderr, "coproc: a future's done callback threw %s: %s\n",
                 st == 0 && name ? name : typeid(e).name(), e.what());
    std::free(name);
  } catch (...) {
    std::fprintf(stderr, "coproc: a future's done callback threw a non-standard exception\n");
  }
}

std::exception_ptr cancelled_exception() {
  return std::make_exception_ptr(
      boost::system::system_error(asio::error::operation_aborted, "future cancelled"));
}

}  // namespace coproc::detail
