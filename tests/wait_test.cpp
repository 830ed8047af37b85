#include <coproc/wait.hpp>

#include <coproc/child.hpp>
#include <coproc/error.hpp>
#include <coproc/future.hpp>
#include <coproc/process.hpp>

#include "fixture.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/executor_work_guard.hpp>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

namespace {

using namespace coproc_test;
using coproc::errc;
using coproc::exit_status;
using coproc::future;
using coproc::future_base;
using coproc::return_when;
using coproc::wait_result;

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

using indices = std::vector<std::size_t>;

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

/// `n` promises of int on `ex`, and their futures.
struct promises {
  promises(const coproc::executor_type& ex, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      p.emplace_back(ex);
      f.push_back(p.back().get_future());
    }
  }
  /// Resolves promise `i` with the value `i`.
  void resolve(std::size_t i) { p[i].set_value(static_cast<int>(i)); }
  std::vector<coproc::promise<int>> p;
  std::vector<future<int>> f;
};

class wait_test : public io_test {
 protected:
  /// Runs the test's io_context on a second thread until `stop_loop()` (or the end of the
  /// test), so the test's own thread may block.
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

  /// Resolves `order` one after another, each in its own handler posted by the one before.
  void resolve_in_order(promises& ps, indices order) {
    auto rest = std::make_shared<indices>(std::move(order));
    auto step = std::make_shared<std::function<void(std::size_t)>>();
    *step = [this, &ps, rest, weak = std::weak_ptr(step)](std::size_t k) {
      if (k == rest->size()) return;
      ps.resolve((*rest)[k]);
      if (auto s = weak.lock()) asio::post(ex(), [s, k] { (*s)(k + 1); });
    };
    asio::post(ex(), [step] { (*step)(0); });
  }

 private:
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard_;
  std::thread loop_;
};

/// Every future `s` hands out (by value, which is its index), until it ends.
template <typename Stream>
asio::awaitable<std::vector<int>> drain(Stream& s) {
  std::vector<int> order;
  while (auto f = co_await s.async_next()) order.push_back(co_await f->async_get());
  co_return order;
}

// --- as_completed --------------------------------------------------------------------------

TEST_F(wait_test, as_completed_hands_out_futures_in_completion_order) {
  promises ps(ex(), 4);
  auto done = coproc::as_completed(ps.f);
  EXPECT_EQ(done.remaining(), 4u);
  resolve_in_order(ps, {2, 0, 3, 1});
  auto order = run(drain(done));
  EXPECT_EQ(order, (std::vector<int>{2, 0, 3, 1}));
  EXPECT_EQ(done.remaining(), 0u);
}

TEST_F(wait_test, as_completed_hands_out_futures_done_at_the_call_first) {
  promises ps(ex(), 4);
  ps.resolve(3);
  ps.resolve(1);
  auto done = coproc::as_completed(ps.f);
  ps.resolve(2);  // done after the call, though before anyone asks
  resolve_in_order(ps, {0});
  EXPECT_EQ(run(drain(done)), (std::vector<int>{1, 3, 2, 0}));
}

TEST_F(wait_test, as_completed_over_no_futures_ends_at_once) {
  std::vector<future<int>> none;
  auto done = coproc::as_completed(none, {.timeout = 0s});
  EXPECT_EQ(done.remaining(), 0u);
  EXPECT_EQ(done.next(), std::nullopt);
  auto f = run([&]() -> asio::awaitable<std::optional<future<int>>> {
    co_return co_await done.async_next();
  }());
  EXPECT_FALSE(f);
}

TEST_F(wait_test, as_completed_over_a_mix_of_future_types) {
  coproc::promise<void> pv(ex());
  coproc::promise<std::string> ps(ex());
  std::vector<future_base> mix{ps.get_future(), pv.get_future()};
  auto done = coproc::as_completed(mix);
  pv.set_value();
  ps.set_value("s");
  auto order = run([&]() -> asio::awaitable<std::vector<bool>> {
    std::vector<bool> is_void;
    while (auto f = co_await done.async_next()) is_void.push_back(f->state() == mix[1].state());
    co_return is_void;
  }());
  EXPECT_EQ(order, (std::vector<bool>{true, false}));
}

TEST_F(wait_test, as_completed_times_out_and_the_futures_keep_running) {
  promises ps(ex(), 3);
  ps.resolve(0);
  auto done = coproc::as_completed(ps.f, {.timeout = 20ms});
  auto [first, timed_out] = run([&]() -> asio::awaitable<std::pair<int, error_code>> {
    auto f = co_await done.async_next();
    const int v = co_await f->async_get();
    // Futures 1 and 2 never finish before the deadline.
    auto [ec, g] = co_await done.async_next(tuple_awaitable);
    EXPECT_FALSE(g);
    co_return std::pair(v, ec);
  }());
  EXPECT_EQ(first, 0);
  EXPECT_EQ(timed_out, make_error_code(errc::timed_out));
  EXPECT_FALSE(ps.f[1].done());
  EXPECT_FALSE(ps.f[1].cancelled());
  EXPECT_EQ(done.remaining(), 2u);
  EXPECT_EQ(error_of([&] { done.next(); }), make_error_code(errc::timed_out));

  // After the deadline, futures that finish are still handed out; then the end.
  ps.resolve(2);
  ps.resolve(1);
  ctx().poll();
  EXPECT_EQ(run(drain(done)), (std::vector<int>{2, 1}));
}

TEST_F(wait_test, as_completed_past_its_deadline_still_hands_out_done_futures) {
  promises ps(ex(), 2);
  ps.resolve(1);
  // The deadline is the call itself: it has passed before anyone asks.
  auto done = coproc::as_completed(ps.f, {.timeout = 0s});
  auto [first, ec] = run([&]() -> asio::awaitable<std::pair<int, error_code>> {
    auto f = co_await done.async_next();
    const int v = co_await f->async_get();
    auto [ec, g] = co_await done.async_next(tuple_awaitable);
    co_return std::pair(v, ec);
  }());
  EXPECT_EQ(first, 1);
  EXPECT_EQ(ec, make_error_code(errc::timed_out));
  EXPECT_EQ(error_of([&] { done.next(); }), make_error_code(errc::timed_out));
  ps.resolve(0);
  ctx().restart();
  ctx().poll();
  EXPECT_EQ(done.next()->get(), 0);
  EXPECT_EQ(done.next(), std::nullopt);
}

TEST_F(wait_test, as_completed_reports_progress_on_the_futures_executor) {
  promises ps(ex(), 3);
  ps.resolve(1);
  std::vector<std::pair<std::size_t, std::size_t>> calls;
  bool always_on_loop = true;
  auto done = coproc::as_completed(ps.f, {.progress = [&](std::size_t n, std::size_t total) {
                                     always_on_loop = always_on_loop &&
                                                      ctx().get_executor().running_in_this_thread();
                                     calls.emplace_back(n, total);
                                   }});
  EXPECT_TRUE(calls.empty()) << "progress is posted, not run inside as_completed";
  resolve_in_order(ps, {0, 2});
  EXPECT_EQ(run(drain(done)), (std::vector<int>{1, 0, 2}));
  EXPECT_EQ(calls, (std::vector<std::pair<std::size_t, std::size_t>>{{1, 3}, {2, 3}, {3, 3}}));
  EXPECT_TRUE(always_on_loop);
}

TEST_F(wait_test, cancelling_async_next_loses_no_future) {
  for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                    asio::cancellation_type::total}) {
    SCOPED_TRACE(static_cast<int>(type));
    promises ps(ex(), 2);
    auto done = coproc::as_completed(ps.f);
    asio::cancellation_signal signal;
    std::optional<std::pair<error_code, std::optional<future<int>>>> got;
    auto handler = [&](error_code ec, std::optional<future<int>> f) { got.emplace(ec, f); };
    done.async_next(asio::bind_cancellation_slot(signal.slot(), handler));
    ctx().restart();
    ctx().poll();
    EXPECT_FALSE(got);

    // Cancelled while the future that would complete it is on its way.
    ps.resolve(1);
    signal.emit(type);
    ASSERT_TRUE(run_until([&] { return got.has_value(); }));
    EXPECT_EQ(got->first, asio::error::operation_aborted);
    EXPECT_FALSE(got->second);
    EXPECT_EQ(done.remaining(), 2u);

    got.reset();
    ps.resolve(0);
    done.async_next(asio::bind_cancellation_slot(signal.slot(), handler));
    ASSERT_TRUE(run_until([&] { return got.has_value(); }));
    EXPECT_FALSE(got->first);
    ASSERT_TRUE(got->second);
    EXPECT_EQ(got->second->get(), 1);
    signal.emit(type);  // after completion: nothing

    EXPECT_EQ(run(drain(done)), (std::vector<int>{0}));
  }
}

TEST_F(wait_test, destroying_the_stream_aborts_a_pending_next) {
  promises ps(ex(), 1);
  std::optional<error_code> got;
  {
    auto done = coproc::as_completed(ps.f);
    done.async_next([&](error_code ec, std::optional<future<int>>) { got = ec; });
    ctx().poll();
    EXPECT_FALSE(got);
  }
  ASSERT_TRUE(run_until([&] { return got.has_value(); }));
  EXPECT_EQ(*got, asio::error::operation_aborted);
  ps.resolve(0);
  ctx().restart();
  ctx().poll();
}

TEST_F(wait_test, a_second_next_while_one_is_pending_is_a_logic_error) {
  promises ps(ex(), 1);
  auto done = coproc::as_completed(ps.f);
  std::optional<error_code> got;
  done.async_next([&](error_code ec, std::optional<future<int>>) { got = ec; });
  EXPECT_THROW(done.async_next([](error_code, std::optional<future<int>>) {}), std::logic_error);
  EXPECT_THROW(done.next(), std::logic_error);
  ps.resolve(0);
  ASSERT_TRUE(run_until([&] { return got.has_value(); }));
  EXPECT_FALSE(*got);
}

TEST_F(wait_test, blocking_next_from_a_thread_that_does_not_run_the_loop) {
  promises ps(ex(), 3);
  ps.resolve(1);
  start_loop();
  auto done = coproc::as_completed(ps.f);
  std::thread producer([&] {
    ps.resolve(0);
    ps.resolve(2);
  });
  std::vector<int> values;
  while (auto f = done.next()) values.push_back(f->get());
  producer.join();
  ASSERT_EQ(values.size(), 3u);
  EXPECT_EQ(values[0], 1) << "done at the call: first";
  std::sort(values.begin(), values.end());
  EXPECT_EQ(values, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(done.next(), std::nullopt);
}

TEST_F(wait_test, blocking_next_times_out_and_on_the_loop_thread_is_a_logic_error) {
  promises ps(ex(), 1);
  {
    auto done = coproc::as_completed(ps.f, {.timeout = 10ms});
    EXPECT_EQ(error_of([&] { done.next(); }), make_error_code(errc::timed_out));
  }
  auto done = coproc::as_completed(ps.f);
  run([&]() -> asio::awaitable<void> {
    EXPECT_THROW(done.next(), std::logic_error);
    co_return;
  }());
  ps.resolve(0);
  run([&]() -> asio::awaitable<void> {
    // Something to hand out: no blocking, so no error.
    auto f = done.next();
    EXPECT_TRUE(f);
    co_return;
  }());
}

asio::awaitable<void> consume(coproc::as_completed_stream<future<int>>& done,
                              std::vector<std::atomic<int>>& seen, std::atomic<bool>& wrong) {
  while (auto f = co_await done.async_next()) {
    if (!f->done()) wrong = true;
    ++seen[static_cast<std::size_t>(f->get())];
  }
}

TEST_F(wait_test, as_completed_on_four_threads_hands_out_each_future_once) {
  constexpr std::size_t n = 2000;
  promises ps(ex(), n);
  for (std::size_t i = 0; i < n; i += 7) ps.resolve(i);
  std::mutex m;
  std::size_t last = 0;
  bool ordered = true;
  auto done = coproc::as_completed(ps.f, {.progress = [&](std::size_t k, std::size_t total) {
                                     std::lock_guard lock(m);
                                     ordered = ordered && k == last + 1 && total == n;
                                     last = k;
                                   }});
  std::vector<std::atomic<int>> seen(n);
  std::atomic<bool> wrong{false};
  std::vector<std::thread> producers;
  run(
      [&]() -> asio::awaitable<void> {
        for (int t = 0; t < 2; ++t)
          producers.emplace_back([&ps, t] {
            for (std::size_t i = static_cast<std::size_t>(t); i < n; i += 2)
              if (i % 7 != 0) ps.resolve(i);
          });
        co_await consume(done, seen, wrong);
      }(),
      120s, 4);
  for (auto& t : producers) t.join();
  EXPECT_FALSE(wrong);
  std::size_t not_once = 0;
  for (auto& s : seen) not_once += s.load() != 1;
  EXPECT_EQ(not_once, 0u);
  // The last progress call may still be running on another thread: wait for it by event.
  ASSERT_TRUE(run_until([&] {
    std::lock_guard lock(m);
    return last == n;
  }));
  std::lock_guard lock(m);
  EXPECT_TRUE(ordered);
}

asio::awaitable<void> race_deadlines(std::vector<std::thread>& producers, int& delivered_all,
                                     int& timed_out) {
  auto ex = co_await asio::this_coro::executor;
  for (int round = 0; round < 200; ++round) {
    auto ps = std::make_shared<promises>(ex, 4);
    auto done = coproc::as_completed(ps->f, {.timeout = 1ms});
    // Half of them later, in some rounds after the deadline.
    producers.emplace_back([ps, later = std::chrono::microseconds(round % 4 * 500)] {
      ps->resolve(0);
      ps->resolve(1);
      std::this_thread::sleep_for(later);
      ps->resolve(2);
      ps->resolve(3);
    });
    // Futures and the deadline race on four threads: each future still comes out exactly once.
    std::vector<int> seen(4);
    int timeouts = 0;
    for (;;) {
      auto [ec, f] = co_await done.async_next(tuple_awaitable);
      if (ec == make_error_code(errc::timed_out)) {
        // Once all are done, every one is handed out, timeout or not.
        EXPECT_EQ(++timeouts, 1);
        ++timed_out;
        auto wait_all = coproc::async_wait(ps->f);
        co_await std::move(wait_all);
        continue;
      }
      EXPECT_FALSE(ec);
      if (!f) break;
      ++seen[static_cast<std::size_t>(f->get())];
    }
    if (seen == std::vector<int>(4, 1)) ++delivered_all;
    auto r = co_await coproc::async_wait(ps->f, return_when::first_completed, 1h);
    EXPECT_EQ(r.done.size(), 4u);
  }
}

TEST_F(wait_test, deadlines_racing_completions_on_four_threads_lose_nothing) {
  std::vector<std::thread> producers;
  int delivered_all = 0, timed_out = 0;
  run(race_deadlines(producers, delivered_all, timed_out), 120s, 4);
  for (auto& t : producers) t.join();
  EXPECT_EQ(delivered_all, 200);
  RecordProperty("rounds_where_the_deadline_passed_first", timed_out);
}

// --- wait ---------------------------------------------------------------------------------

TEST_F(wait_test, wait_all_completed_from_another_thread) {
  promises ps(ex(), 3);
  start_loop();
  std::thread producer([&] {
    for (std::size_t i = 0; i < 3; ++i) ps.resolve(i);
  });
  auto r = coproc::wait(ps.f);
  producer.join();
  EXPECT_EQ(r.done, (indices{0, 1, 2}));
  EXPECT_TRUE(r.not_done.empty());
}

TEST_F(wait_test, wait_first_completed_returns_when_one_is_done) {
  promises ps(ex(), 3);
  start_loop();
  std::thread producer([&] { ps.resolve(1); });
  auto r = coproc::wait(ps.f, return_when::first_completed);
  producer.join();
  EXPECT_EQ(r.done, (indices{1}));
  EXPECT_EQ(r.not_done, (indices{0, 2}));
  stop_loop();
  ps.resolve(0);
  ps.resolve(2);
}

TEST_F(wait_test, wait_first_exception_returns_early_on_an_exception) {
  promises ps(ex(), 3);
  start_loop();
  std::thread producer([&] {
    ps.resolve(0);
    ps.p[1].set_exception(std::make_exception_ptr(std::runtime_error("failed")));
  });
  auto r = coproc::wait(ps.f, return_when::first_exception);
  producer.join();
  EXPECT_EQ(r.not_done, (indices{2})) << "future 2 never finishes";
  EXPECT_EQ(r.done.back(), 1u);
  stop_loop();
  ps.resolve(2);
}

TEST_F(wait_test, wait_first_exception_counts_a_cancelled_future_as_done_not_as_exception) {
  promises ps(ex(), 2);
  ASSERT_TRUE(ps.f[0].cancel());
  std::optional<wait_result> r;
  coproc::async_wait(ps.f, return_when::first_exception, std::nullopt,
                     [&](error_code ec, wait_result w) {
                       EXPECT_FALSE(ec);
                       r = std::move(w);
                     });
  ctx().poll();
  EXPECT_FALSE(r) << "a cancelled future is not an exception";
  ps.resolve(1);
  ASSERT_TRUE(run_until([&] { return r.has_value(); }));
  EXPECT_EQ(r->done, (indices{0, 1}));
  EXPECT_TRUE(r->not_done.empty());

  // And the blocking form, for the same futures: all done.
  EXPECT_EQ(coproc::wait(ps.f, return_when::first_exception).done, (indices{0, 1}));
}

TEST_F(wait_test, wait_with_a_timeout_returns_the_split) {
  promises ps(ex(), 3);
  ps.resolve(1);
  auto r = coproc::wait(ps.f, return_when::all_completed, 10ms);
  EXPECT_EQ(r.done, (indices{1}));
  EXPECT_EQ(r.not_done, (indices{0, 2}));
  // A zero timeout polls, on any thread, the loop's included.
  run([&]() -> asio::awaitable<void> {
    auto p = coproc::wait(ps.f, return_when::all_completed, 0s);
    EXPECT_EQ(p.done, (indices{1}));
    EXPECT_THROW(coproc::wait(ps.f), std::logic_error) << "it would block the loop";
    co_return;
  }());
  ps.resolve(0);
  ps.resolve(2);
}

TEST_F(wait_test, wait_returns_at_once_when_satisfied) {
  promises ps(ex(), 2);
  ps.resolve(0);
  EXPECT_EQ(coproc::wait(ps.f, return_when::first_completed).done, (indices{0}));
  ps.p[1].set_exception(std::make_exception_ptr(std::runtime_error("x")));
  EXPECT_EQ(coproc::wait(ps.f, return_when::first_exception).done, (indices{0, 1}));
  EXPECT_EQ(coproc::wait(ps.f).done, (indices{0, 1}));
  std::vector<future<int>> none;
  auto r = coproc::wait(none, return_when::first_completed);
  EXPECT_TRUE(r.done.empty());
  EXPECT_TRUE(r.not_done.empty());
}

// --- async_wait ---------------------------------------------------------------------------

TEST_F(wait_test, async_wait_in_each_mode) {
  promises ps(ex(), 3);
  auto results = run([&]() -> asio::awaitable<std::vector<wait_result>> {
    std::vector<wait_result> out;
    resolve_in_order(ps, {2});
    out.push_back(co_await coproc::async_wait(ps.f, return_when::first_completed));
    asio::post(ex(),
               [&] { ps.p[0].set_exception(std::make_exception_ptr(std::runtime_error("e"))); });
    out.push_back(co_await coproc::async_wait(ps.f, return_when::first_exception));
    resolve_in_order(ps, {1});
    out.push_back(co_await coproc::async_wait(ps.f));
    co_return out;
  }());
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0].done, (indices{2}));
  EXPECT_EQ(results[0].not_done, (indices{0, 1}));
  EXPECT_EQ(results[1].done, (indices{0, 2}));
  EXPECT_EQ(results[1].not_done, (indices{1}));
  EXPECT_EQ(results[2].done, (indices{0, 1, 2}));
}

TEST_F(wait_test, async_wait_timeout_is_not_an_error) {
  promises ps(ex(), 2);
  ps.resolve(0);
  auto [ec, r] = run([&]() -> asio::awaitable<std::tuple<error_code, wait_result>> {
    co_return co_await coproc::async_wait(ps.f, return_when::all_completed, 10ms, tuple_awaitable);
  }());
  EXPECT_FALSE(ec);
  EXPECT_EQ(r.done, (indices{0}));
  EXPECT_EQ(r.not_done, (indices{1}));
  EXPECT_FALSE(ps.f[1].done());
  ps.resolve(1);
}

TEST_F(wait_test, cancelling_async_wait_gives_operation_aborted_and_the_split) {
  for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                    asio::cancellation_type::total}) {
    SCOPED_TRACE(static_cast<int>(type));
    promises ps(ex(), 2);
    ps.resolve(1);
    asio::cancellation_signal signal;
    std::optional<std::pair<error_code, wait_result>> got;
    coproc::async_wait(
        ps.f, return_when::all_completed, 1h,
        asio::bind_cancellation_slot(
            signal.slot(), [&](error_code ec, wait_result r) { got.emplace(ec, std::move(r)); }));
    ctx().restart();
    ctx().poll();
    EXPECT_FALSE(got);
    signal.emit(type);
    ASSERT_TRUE(run_until([&] { return got.has_value(); }));
    EXPECT_EQ(got->first, asio::error::operation_aborted);
    EXPECT_EQ(got->second.done, (indices{1}));
    EXPECT_EQ(got->second.not_done, (indices{0}));
    EXPECT_FALSE(ps.f[0].done());
    EXPECT_FALSE(ps.f[0].cancelled());
    ps.resolve(0);
    // Its timer was cancelled with it: the loop runs out of work.
    ctx().restart();
    ctx().run();
  }
}

// --- when_all / when_any ------------------------------------------------------------------

TEST_F(wait_test, when_all_gives_a_tuple_of_mixed_types) {
  coproc::promise<int> pi(ex());
  coproc::promise<void> pv(ex());
  coproc::promise<std::string> ps(ex());
  auto fi = pi.get_future();
  auto fv = pv.get_future();
  auto fs = ps.get_future();
  auto all = run([&]() -> asio::awaitable<std::tuple<int, std::monostate, std::string>> {
    asio::post(ex(), [&] {
      ps.set_value("three");
      asio::post(ex(), [&] {
        pv.set_value();
        pi.set_value(1);
      });
    });
    co_return co_await coproc::when_all(fi, fv, fs);
  }());
  EXPECT_EQ(std::get<0>(all), 1);
  EXPECT_EQ(std::get<2>(all), "three");
}

TEST_F(wait_test, when_all_rethrows_the_first_exception_in_argument_order) {
  coproc::promise<int> a(ex()), b(ex());
  coproc::promise<void> c(ex());
  auto fa = a.get_future();
  auto fb = b.get_future();
  auto fc = c.get_future();
  std::string what;
  bool waited_for_all = false;
  run([&]() -> asio::awaitable<void> {
    // The later argument fails first; the earlier one fails later; the last one succeeds last.
    b.set_exception(std::make_exception_ptr(std::runtime_error("second")));
    asio::post(ex(), [&] {
      a.set_exception(std::make_exception_ptr(std::runtime_error("first")));
      asio::post(ex(), [&] { c.set_value(); });
    });
    try {
      co_await coproc::when_all(fa, fb, fc);
    } catch (const std::runtime_error& e) {
      what = e.what();
      waited_for_all = fc.done();
    }
  }());
  EXPECT_EQ(what, "first");
  EXPECT_TRUE(waited_for_all);
}

TEST_F(wait_test, when_all_over_a_vector) {
  promises ps(ex(), 3);
  resolve_in_order(ps, {2, 1, 0});
  auto values = run(coproc::when_all(ps.f));
  EXPECT_EQ(values, (std::vector<int>{0, 1, 2}));

  std::vector<future<void>> voids{future<void>::ready(ex()), future<void>::ready(ex())};
  EXPECT_EQ(run(coproc::when_all(voids)).size(), 2u);
  EXPECT_EQ(run(coproc::when_all()), std::tuple<>());
}

TEST_F(wait_test, when_any_gives_the_index_of_the_first_done) {
  coproc::promise<int> never(ex());
  coproc::promise<void> later(ex());
  auto fn = never.get_future();
  auto fl = later.get_future();
  auto i = run([&]() -> asio::awaitable<std::size_t> {
    asio::post(ex(), [&] { later.set_value(); });
    co_return co_await coproc::when_any(fn, fl);
  }());
  EXPECT_EQ(i, 1u);
  EXPECT_FALSE(fn.done()) << "the others keep running";

  promises ps(ex(), 4);
  ps.resolve(3);
  ps.resolve(2);
  EXPECT_EQ(run(coproc::when_any(ps.f)), 2u) << "the lowest index among those already done";
  resolve_in_order(ps, {1});
  std::vector<future<int>> pending{ps.f[0], ps.f[1]};
  EXPECT_EQ(run(coproc::when_any(pending)), 1u);

  std::vector<future<int>> none;
  EXPECT_THROW(run(coproc::when_any(none)), std::invalid_argument);
  never.set_value(0);
  ps.resolve(0);
}

TEST_F(wait_test, cancelling_when_any_leaves_the_futures_unaffected) {
  promises ps(ex(), 2);
  asio::cancellation_signal signal;
  std::optional<std::exception_ptr> outcome;
  asio::co_spawn(ex(), coproc::when_any(ps.f),
                 asio::bind_cancellation_slot(
                     signal.slot(), [&](std::exception_ptr e, std::size_t) { outcome = e; }));
  ctx().poll();
  EXPECT_FALSE(outcome);
  signal.emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(run_until([&] { return outcome.has_value(); }));
  EXPECT_EQ(error_of([&] { std::rethrow_exception(*outcome); }), asio::error::operation_aborted);
  EXPECT_FALSE(ps.f[0].done());
  ps.resolve(0);
  ps.resolve(1);
}

// --- children and async_call ----------------------------------------------------------------

TEST_F(wait_test, a_promise_wins_the_race_against_a_sleeping_child) {
  coproc::promise<int> task(ex());
  auto ft = task.get_future();
  auto c = coproc::spawn(ex(), helper("sleep-forever"));
  auto fc = coproc::make_future(c);
  EXPECT_TRUE(fc.running());
  EXPECT_FALSE(fc.cancel()) << "a child's future cannot be cancelled through the future";
  auto [winner, st] = run([&]() -> asio::awaitable<std::pair<std::size_t, exit_status>> {
    asio::post(ex(), [&] { task.set_value(5); });
    const auto i = co_await coproc::when_any(ft, fc);
    c.kill();
    const auto status = co_await fc.async_get();
    co_return std::pair(i, status);
  }());
  EXPECT_EQ(winner, 0u);
  EXPECT_EQ(ft.get(), 5);
  EXPECT_EQ(st, exit_status::signaled(SIGKILL));
}

TEST_F(wait_test, a_child_wins_the_race_against_a_pending_promise) {
  coproc::promise<int> task(ex());
  auto ft = task.get_future();
  auto c = coproc::spawn(ex(), helper("exit", "3"));
  auto fc = coproc::make_future(c);
  auto winner = run(coproc::when_any(ft, fc));
  EXPECT_EQ(winner, 1u);
  EXPECT_FALSE(ft.done());
  EXPECT_EQ(fc.get(), exit_status::exited(3));
  EXPECT_EQ(c.status(), exit_status::exited(3));
  task.set_value(0);
}

TEST_F(wait_test, make_future_of_a_detached_child_fails_with_not_running) {
  auto c = coproc::spawn(ex(), helper("exit", "0"));
  const int pid = c.pid();
  c.detach();
  auto fc = coproc::make_future(c);
  run([&]() -> asio::awaitable<void> { co_await fc.async_wait(); }());
  EXPECT_EQ(error_of([&] { fc.get(); }), make_error_code(errc::not_running));
  // The detached child is reaped when the context shuts down, once it has exited.
  EXPECT_TRUE(wait_exited_no_reap(pid));
}

int square(int x) { return x * x; }
int fail_with(int x) { throw std::runtime_error("call failed with " + std::to_string(x)); }

TEST_F(wait_test, make_future_over_async_call) {
  auto f = coproc::make_future(ex(), coproc::async_call(square, 7));
  auto g = coproc::make_future(ex(), coproc::async_call(fail_with, 2));
  coproc::promise<int> never(ex());
  auto fn = never.get_future();
  auto [first, values] = run([&]() -> asio::awaitable<std::pair<std::size_t, int>> {
    const auto i = co_await coproc::when_any(fn, f);
    auto all = co_await coproc::when_all(f);
    co_return std::pair(i, std::get<0>(all));
  }());
  EXPECT_EQ(first, 1u);
  EXPECT_EQ(values, 49);
  run([&]() -> asio::awaitable<void> { co_await g.async_wait(); }());
  try {
    g.get();
    ADD_FAILURE() << "get() returned";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("call failed with 2"), std::string::npos) << e.what();
  }
  never.set_value(0);
}

}  // namespace
