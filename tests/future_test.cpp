#include <coproc/future.hpp>

#include <coproc/error.hpp>

#include "fixture.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/use_future.hpp>

#include <atomic>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace coproc_test;
using coproc::errc;
using coproc::future;
using status = coproc::detail::future_state_base::status;

/// The error code of the `system_error` that `f()` throws; an empty code when it throws none.
template <typename F>
error_code error_of(F&& f) {
  try {
    f();
  } catch (const boost::system::system_error& e) {
    return e.code();
  }
  return {};
}

/// The error code of the `system_error` in `e`; empty for none or another exception.
error_code error_in(std::exception_ptr e) {
  return error_of([&] {
    if (e) std::rethrow_exception(e);
  });
}

/// The message of the exception in `e`.
std::string what_of(std::exception_ptr e) {
  try {
    if (e) std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  }
  return {};
}

class future_test : public io_test {
 protected:
  /// Runs the test's io_context on a second thread until `stop_loop()` (or destruction), so
  /// the test's own thread may block on futures.
  void start_loop() {
    guard_.emplace(ctx().get_executor());
    loop_ = std::thread([this] { ctx().run(); });
  }
  void stop_loop() {
    if (!loop_.joinable()) return;
    guard_.reset();
    ctx().stop();
    loop_.join();
  }
  void TearDown() override {
    stop_loop();
    io_test::TearDown();
  }
  void cancel_waits_with(asio::cancellation_type type);

 private:
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard_;
  std::thread loop_;
};

// --- co_await --------------------------------------------------------------------------------

TEST_F(future_test, co_await_gives_the_value_of_a_ready_future) {
  auto f = future<int>::ready(ex(), 42);
  EXPECT_TRUE(f.valid());
  EXPECT_TRUE(f.done());
  auto v = run([&]() -> asio::awaitable<int> { co_return co_await f.async_get(); }());
  EXPECT_EQ(v, 42);
}

TEST_F(future_test, co_await_waits_for_a_value_set_later) {
  coproc::promise<std::string> p(ex());
  auto f = p.get_future();
  auto v = run([&]() -> asio::awaitable<std::string> {
    asio::post(ex(), [&] { p.set_value("later"); });
    auto first = co_await f.async_get();
    // The future operation form: `co_await std::move(fut)`.
    auto copy = f;
    auto second = co_await std::move(copy);
    co_return first + "," + second;
  }());
  EXPECT_EQ(v, "later,later");
  EXPECT_EQ(f.get(), "later") << "a done future's get() does not block, even on any thread";
}

TEST_F(future_test, co_await_rethrows_the_exception) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  EXPECT_THROW(run([&]() -> asio::awaitable<int> {
                 asio::post(ex(), [&] {
                   p.set_exception(std::make_exception_ptr(std::runtime_error("task failed")));
                 });
                 co_return co_await f.async_get();
               }()),
               std::runtime_error);
  EXPECT_EQ(what_of(f.exception()), "task failed");
  EXPECT_THROW(f.get(), std::runtime_error);
}

TEST_F(future_test, co_await_of_a_void_future) {
  coproc::promise<void> p(ex());
  auto f = p.get_future();
  bool resumed = false;
  run([&]() -> asio::awaitable<void> {
    asio::post(ex(), [&] { p.set_value(); });
    co_await f.async_get();
    resumed = true;
  }());
  EXPECT_TRUE(resumed);
  EXPECT_TRUE(f.done());
  EXPECT_FALSE(f.exception());

  coproc::promise<void> q(ex());
  auto g = q.get_future();
  q.set_exception(std::make_exception_ptr(std::logic_error("void failed")));
  EXPECT_THROW(run([&]() -> asio::awaitable<void> { co_await g.async_get(); }()), std::logic_error);
}

TEST_F(future_test, co_await_async_wait_does_not_rethrow) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  p.set_exception(std::make_exception_ptr(std::runtime_error("ignored by wait")));
  run([&]() -> asio::awaitable<void> { co_await f.async_wait(); }());
  EXPECT_TRUE(f.done());
}

// --- completion tokens ------------------------------------------------------------------------

TEST_F(future_test, async_get_and_async_wait_take_callbacks) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  std::optional<int> got;
  std::optional<error_code> waited;
  f.async_get([&](std::exception_ptr e, int v) {
    EXPECT_FALSE(e);
    got = v;
  });
  f.async_wait([&](error_code ec) { waited = ec; });
  ctx().poll();
  EXPECT_FALSE(got);
  EXPECT_FALSE(waited);
  EXPECT_TRUE(p.set_value(7));
  EXPECT_FALSE(got) << "completions are posted, never run inside set_value";
  ctx().run();
  EXPECT_EQ(got, 7);
  ASSERT_TRUE(waited);
  EXPECT_FALSE(*waited);
}

TEST_F(future_test, async_get_and_async_wait_with_use_future) {
  start_loop();
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  std::future<int> sf = f.async_get(asio::use_future);
  p.set_value(11);
  ASSERT_EQ(sf.wait_for(30s), std::future_status::ready);
  EXPECT_EQ(sf.get(), 11);

  coproc::promise<double> r(ex());
  std::future<void> waited = r.get_future().async_wait(asio::use_future);
  r.set_value(0.5);
  ASSERT_EQ(waited.wait_for(30s), std::future_status::ready);
  waited.get();

  coproc::promise<void> q(ex());
  std::future<void> sv = q.get_future().async_get(asio::use_future);
  q.set_exception(std::make_exception_ptr(std::runtime_error("through use_future")));
  ASSERT_EQ(sv.wait_for(30s), std::future_status::ready);
  EXPECT_THROW(sv.get(), std::runtime_error);
}

TEST_F(future_test, async_get_with_deferred_starts_when_invoked) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  auto op = f.async_get(asio::deferred);
  p.set_value(5);
  std::optional<int> got;
  std::move(op)([&](std::exception_ptr e, int v) {
    EXPECT_FALSE(e);
    got = v;
  });
  ctx().run();
  EXPECT_EQ(got, 5);

  std::optional<error_code> waited;
  auto w = f.async_wait(asio::deferred);
  std::move(w)([&](error_code ec) { waited = ec; });
  ctx().restart();
  ctx().run();
  ASSERT_TRUE(waited);
  EXPECT_FALSE(*waited);
}

// --- blocking waits ---------------------------------------------------------------------------

TEST_F(future_test, get_blocks_until_another_thread_sets_the_value) {
  start_loop();
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  std::thread producer([&] { p.set_value(99); });
  EXPECT_EQ(f.get(), 99);
  producer.join();
}

TEST_F(future_test, get_with_timeout_throws_timed_out_and_the_future_stays_pending) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  EXPECT_EQ(error_of([&] { f.get(20ms); }), make_error_code(errc::timed_out));
  EXPECT_FALSE(f.done());
  EXPECT_FALSE(f.wait_for(1ms));
  p.set_value(3);
  EXPECT_TRUE(f.wait_for(0ms));
  EXPECT_EQ(f.get(1ms), 3);
}

TEST_F(future_test, wait_for_returns_true_once_done) {
  coproc::promise<void> p(ex());
  auto f = p.get_future();
  std::thread producer([&] { p.set_value(); });
  EXPECT_TRUE(f.wait_for(60s));
  producer.join();
  f.wait();
  EXPECT_TRUE(f.done());
}

TEST_F(future_test, blocking_wait_on_the_loop_thread_throws_logic_error) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  int thrown = 0;
  run([&]() -> asio::awaitable<void> {
    EXPECT_THROW(f.get(), std::logic_error);
    EXPECT_THROW(f.get(1s), std::logic_error);
    EXPECT_THROW(f.wait(), std::logic_error);
    EXPECT_THROW(f.wait_for(1s), std::logic_error);
    thrown = 4;
    p.set_value(1);
    // Done: a blocking get returns at once, on any thread.
    EXPECT_EQ(f.get(), 1);
    co_return;
  }());
  EXPECT_EQ(thrown, 4);
}

// --- state machine ----------------------------------------------------------------------------

TEST_F(future_test, pending_running_finished) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  EXPECT_FALSE(f.done());
  EXPECT_FALSE(f.running());
  EXPECT_FALSE(f.cancelled());
  EXPECT_EQ(f.state()->state(), status::pending);
  EXPECT_TRUE(p.set_running());
  EXPECT_TRUE(f.running());
  EXPECT_FALSE(f.done());
  EXPECT_TRUE(p.set_running()) << "set_running twice is harmless";
  EXPECT_TRUE(p.set_value(1));
  EXPECT_TRUE(f.done());
  EXPECT_FALSE(f.running());
  EXPECT_FALSE(f.cancelled());
  EXPECT_EQ(f.state()->state(), status::finished);
  EXPECT_FALSE(f.exception());
}

TEST_F(future_test, default_future_is_not_valid) {
  future<int> f;
  EXPECT_FALSE(f.valid());
  coproc::future_base b;
  EXPECT_FALSE(b.valid());
}

TEST_F(future_test, cancel_of_a_pending_future_runs_waiters_and_callbacks) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  std::exception_ptr got_error;
  bool got_called = false, waited = false, called_back = false;
  f.async_get([&](std::exception_ptr e, int) {
    got_called = true;
    got_error = e;
  });
  f.async_wait([&](error_code ec) {
    EXPECT_FALSE(ec) << "the wait succeeds: the future is done";
    waited = true;
  });
  f.add_done_callback([&](const future<int>& g) {
    EXPECT_TRUE(g.cancelled());
    called_back = true;
  });

  EXPECT_TRUE(f.cancel());
  EXPECT_TRUE(f.cancel()) << "cancelling a cancelled future reports true again";
  EXPECT_TRUE(f.cancelled());
  EXPECT_TRUE(f.done());
  EXPECT_FALSE(f.running());
  ctx().run();
  EXPECT_TRUE(got_called);
  EXPECT_EQ(error_in(got_error), asio::error::operation_aborted);
  EXPECT_TRUE(waited);
  EXPECT_TRUE(called_back);
  EXPECT_EQ(error_in(f.exception()), asio::error::operation_aborted);
  EXPECT_EQ(error_of([&] { f.get(); }), asio::error::operation_aborted);

  EXPECT_FALSE(p.set_running()) << "the producer learns not to start";
  EXPECT_FALSE(p.set_value(5)) << "a value after cancel is ignored";
  EXPECT_TRUE(f.cancelled());
  EXPECT_EQ(error_of([&] { f.get(); }), asio::error::operation_aborted);
}

TEST_F(future_test, cancel_of_a_running_or_done_future_fails) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  ASSERT_TRUE(p.set_running());
  EXPECT_FALSE(f.cancel());
  EXPECT_TRUE(f.running());
  EXPECT_FALSE(f.cancelled());
  p.set_value(8);
  EXPECT_FALSE(f.cancel());
  EXPECT_EQ(f.get(), 8);
}

TEST_F(future_test, resolves_exactly_once) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  int calls = 0;
  f.add_done_callback([&] { ++calls; });
  EXPECT_TRUE(p.set_value(1));
  EXPECT_FALSE(p.set_value(2));
  EXPECT_FALSE(p.set_exception(std::make_exception_ptr(std::runtime_error("late"))));
  EXPECT_TRUE(p.done());
  ctx().run();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(f.get(), 1);
  EXPECT_FALSE(f.exception());
}

TEST_F(future_test, destroying_an_unresolved_promise_breaks_it) {
  std::optional<coproc::promise<int>> p(std::in_place, ex());
  auto f = p->get_future();
  p.reset();
  ASSERT_TRUE(f.done());
  try {
    f.get();
    ADD_FAILURE() << "get() returned";
  } catch (const std::future_error& e) {
    EXPECT_EQ(e.code(), std::future_errc::broken_promise);
  }

  // Move-assigning over an unresolved promise breaks the old one too.
  coproc::promise<int> a(ex());
  auto fa = a.get_future();
  a = coproc::promise<int>(ex());
  EXPECT_TRUE(fa.done());
  EXPECT_THROW(fa.get(), std::future_error);
  auto fb = a.get_future();
  a.set_value(4);
  EXPECT_EQ(fb.get(), 4);

  // A resolved promise's destruction changes nothing.
  future<int> kept;
  {
    coproc::promise<int> q(ex());
    kept = q.get_future();
    q.set_value(6);
  }
  EXPECT_EQ(kept.get(), 6);
}

// --- done callbacks ---------------------------------------------------------------------------

// --- completion_batch ------------------------------------------------------------------------

TEST_F(future_test, a_batch_holds_completions_until_its_flush_runs_them_inline_on_the_loop) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  std::vector<std::string> events;
  f.async_get([&](std::exception_ptr e, int v) {
    events.push_back(e ? "error" : "waiter " + std::to_string(v));
  });
  f.add_done_callback([&] { events.push_back("callback"); });
  asio::post(ex(), [&] {
    coproc::detail::completion_batch batch;
    p.set_value(5);
    events.push_back("resolved");
    batch.flush();
    events.push_back("flushed");
  });
  ctx().run();
  EXPECT_EQ(events, (std::vector<std::string>{"resolved", "waiter 5", "callback", "flushed"}));
}

TEST_F(future_test, a_batch_off_the_loop_thread_posts_its_completions) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  bool ran = false;
  f.add_done_callback([&] { ran = true; });
  {
    coproc::detail::completion_batch batch;
    p.set_value(1);
    batch.flush();  // this thread does not run the io_context: posted
  }
  EXPECT_FALSE(ran);
  ctx().run();
  EXPECT_TRUE(ran);
}

TEST_F(future_test, a_batch_destroyed_unflushed_posts_and_an_inner_batch_defers_to_the_outer) {
  coproc::promise<int> p(ex()), q(ex());
  std::vector<std::string> events;
  p.get_future().add_done_callback([&] { events.push_back("p"); });
  q.get_future().add_done_callback([&] { events.push_back("q"); });
  asio::post(ex(), [&] {
    {
      coproc::detail::completion_batch outer;
      {
        coproc::detail::completion_batch inner;
        p.set_value(1);
        inner.flush();  // not the owner: nothing yet
      }
      events.push_back("inner done");
      q.set_value(2);
    }  // unflushed: posted
    events.push_back("outer done");
  });
  ctx().run();
  EXPECT_EQ(events, (std::vector<std::string>{"inner done", "outer done", "p", "q"}));
}

TEST_F(future_test, a_throwing_handler_in_a_flush_does_not_stop_the_others) {
  coproc::promise<int> p(ex()), q(ex());
  bool second = false, flushed = false;
  p.get_future().async_wait([](error_code) { throw std::runtime_error("handler threw"); });
  q.get_future().async_wait([&](error_code) { second = true; });
  asio::post(ex(), [&] {
    coproc::detail::completion_batch batch;
    p.set_value(1);
    q.set_value(2);
    batch.flush();
    flushed = true;
  });
  // The io_context keeps what a handler run inline throws, and run() throws it after.
  EXPECT_THROW(ctx().run(), std::runtime_error);
  EXPECT_TRUE(second);
  EXPECT_TRUE(flushed);
}

TEST_F(future_test, done_callback_runs_on_the_futures_executor) {
  start_loop();
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  std::promise<std::pair<bool, std::thread::id>> ran;
  f.add_done_callback([&] {
    ran.set_value({ctx().get_executor().running_in_this_thread(), std::this_thread::get_id()});
  });
  p.set_value(1);  // from this thread, which does not run the io_context
  auto r = ran.get_future();
  ASSERT_EQ(r.wait_for(30s), std::future_status::ready);
  auto [on_loop, thread] = r.get();
  EXPECT_TRUE(on_loop);
  EXPECT_NE(thread, std::this_thread::get_id());
}

TEST_F(future_test, done_callback_added_after_done_still_runs_posted) {
  auto f = future<int>::ready(ex(), 2);
  std::optional<int> seen;
  f.add_done_callback([&](const future<int>& g) { seen = g.get(); });
  EXPECT_FALSE(seen) << "posted, not run inside add_done_callback";
  ctx().run();
  EXPECT_EQ(seen, 2);
}

TEST_F(future_test, a_throwing_done_callback_does_not_stop_the_others) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  std::vector<int> ran;
  f.add_done_callback([&] { ran.push_back(1); });
  f.add_done_callback([&] {
    ran.push_back(2);
    throw std::runtime_error("callback boom");
  });
  f.add_done_callback([&] { ran.push_back(3); });
  p.set_value(0);
  testing::internal::CaptureStderr();
  ctx().run();
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(ran, (std::vector<int>{1, 2, 3}));
  EXPECT_NE(err.find("callback boom"), std::string::npos) << err;
  EXPECT_NE(err.find("std::runtime_error"), std::string::npos) << err;
}

// --- per-operation cancellation -----------------------------------------------------------

/// Cancels an `async_get` and an `async_wait` with `type`; the future must not notice.
void future_test::cancel_waits_with(asio::cancellation_type type) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  asio::cancellation_signal get_signal, wait_signal;
  std::optional<std::exception_ptr> got;
  std::optional<error_code> waited;
  f.async_get(
      asio::bind_cancellation_slot(get_signal.slot(), [&](std::exception_ptr e, int) { got = e; }));
  f.async_wait(
      asio::bind_cancellation_slot(wait_signal.slot(), [&](error_code ec) { waited = ec; }));
  ctx().poll();
  EXPECT_FALSE(got);
  EXPECT_FALSE(waited);

  get_signal.emit(type);
  wait_signal.emit(type);
  ASSERT_TRUE(run_until([&] { return got && waited; }));
  EXPECT_EQ(error_in(*got), asio::error::operation_aborted);
  ASSERT_TRUE(waited);
  EXPECT_EQ(*waited, asio::error::operation_aborted);

  EXPECT_FALSE(f.done());
  EXPECT_FALSE(f.cancelled());
  std::optional<int> later;
  f.async_get([&](std::exception_ptr e, int v) {
    EXPECT_FALSE(e);
    later = v;
  });
  EXPECT_TRUE(p.set_value(12));
  ctx().restart();
  ctx().run();
  EXPECT_EQ(later, 12);
  EXPECT_EQ(f.get(), 12);

  // A signal emitted after the operation completed does nothing.
  get_signal.emit(type);
  wait_signal.emit(type);
  ctx().restart();
  ctx().run();
  EXPECT_EQ(f.get(), 12);
}

TEST_F(future_test, terminal_cancellation_of_a_wait_leaves_the_future_unaffected) {
  cancel_waits_with(asio::cancellation_type::terminal);
}

TEST_F(future_test, partial_cancellation_of_a_wait_leaves_the_future_unaffected) {
  cancel_waits_with(asio::cancellation_type::partial);
}

TEST_F(future_test, total_cancellation_of_a_wait_leaves_the_future_unaffected) {
  cancel_waits_with(asio::cancellation_type::total);
}

TEST_F(future_test, cancelling_the_awaiting_coroutine_leaves_the_future_unaffected) {
  coproc::promise<int> p(ex());
  auto f = p.get_future();
  asio::cancellation_signal signal;
  std::optional<std::exception_ptr> outcome;
  asio::co_spawn(
      ex(), [](future<int> f) -> asio::awaitable<int> { co_return co_await f.async_get(); }(f),
      asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e, int) { outcome = e; }));
  ctx().poll();
  EXPECT_FALSE(outcome);
  signal.emit(asio::cancellation_type::terminal);
  ctx().restart();
  ctx().run();
  ASSERT_TRUE(outcome);
  EXPECT_EQ(error_in(*outcome), asio::error::operation_aborted);
  EXPECT_FALSE(f.done());
  p.set_value(1);
  EXPECT_EQ(f.get(), 1);
}

// --- make_future over a coroutine ---------------------------------------------------------

asio::awaitable<int> twice_later(int x) {
  asio::steady_timer t(co_await asio::this_coro::executor, 1ms);
  co_await t.async_wait(asio::use_awaitable);
  co_return 2 * x;
}

asio::awaitable<void> fail_later() {
  auto ex = co_await asio::this_coro::executor;
  auto op = asio::post(ex, asio::use_awaitable);
  co_await std::move(op);
  throw std::runtime_error("coroutine failed");
}

TEST_F(future_test, make_future_runs_a_coroutine_now) {
  auto f = coproc::make_future(ex(), twice_later(21));
  EXPECT_TRUE(f.running()) << "running at once";
  EXPECT_FALSE(f.cancel());
  auto g = coproc::make_future(ex(), fail_later());
  auto v = run([&]() -> asio::awaitable<int> { co_return co_await f.async_get(); }());
  EXPECT_EQ(v, 42);
  run([&]() -> asio::awaitable<void> { co_await g.async_wait(); }());
  EXPECT_EQ(what_of(g.exception()), "coroutine failed");
}

// --- stress -----------------------------------------------------------------------------------

struct stress_state {
  static constexpr int count = 10000;
  std::vector<std::atomic<int>> seen = std::vector<std::atomic<int>>(count);
  std::atomic<int> observed{0};
  std::atomic<int> wrong{0};
  std::optional<coproc::promise<void>> all_observed;
};

asio::awaitable<void> observe(future<int> f, int expected, stress_state& st) {
  const int v = co_await f.async_get();
  if (v != expected) ++st.wrong;
  ++st.seen[static_cast<std::size_t>(expected)];
  if (++st.observed == stress_state::count) st.all_observed->set_value();
}

TEST_F(future_test, stress_promises_resolved_from_other_threads_are_each_observed_once) {
  stress_state st;
  st.all_observed.emplace(ex());
  auto all = st.all_observed->get_future();
  std::vector<coproc::promise<int>> promises;
  promises.reserve(stress_state::count);
  for (int i = 0; i < stress_state::count; ++i) promises.emplace_back(ex());

  std::vector<std::thread> producers;
  run(
      [&]() -> asio::awaitable<void> {
        for (int i = 0; i < stress_state::count; ++i)
          asio::co_spawn(ex(), observe(promises[static_cast<std::size_t>(i)].get_future(), i, st),
                         asio::detached);
        // Two producers, interleaved, while the observers start and wait on four threads.
        for (int t = 0; t < 2; ++t)
          producers.emplace_back([&promises, t] {
            for (std::size_t i = static_cast<std::size_t>(t); i < promises.size(); i += 2)
              promises[i].set_value(static_cast<int>(i));
          });
        co_await all.async_get();
      }(),
      120s, 4);
  for (auto& t : producers) t.join();
  EXPECT_EQ(st.observed.load(), stress_state::count);
  EXPECT_EQ(st.wrong.load(), 0);
  int not_once = 0;
  for (auto& s : st.seen)
    if (s.load() != 1) ++not_once;
  EXPECT_EQ(not_once, 0);
}

}  // namespace
