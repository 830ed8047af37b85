#include <coproc/thread_pool.hpp>

#include <coproc/error.hpp>
#include <coproc/future.hpp>
#include <coproc/result_stream.hpp>

#include "fixture.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <future>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using namespace coproc_test;
using coproc::errc;
using coproc::future;
using coproc::map_options;
using coproc::thread_pool;
using coproc::thread_pool_options;

int square(int x) { return x * x; }

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

/// A door tasks wait at until the test opens it: a handshake, not a sleep.
class gate {
 public:
  void open() {
    std::lock_guard lock(m_);
    open_ = true;
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return open_; });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool open_ = false;
};

/// Opens a gate when the test's scope ends. Declared after the pool, it runs before the pool's
/// destructor, so a failed assertion never leaves that destructor waiting for a blocked task.
struct open_at_exit {
  gate& g;
  ~open_at_exit() { g.open(); }
};

/// Counts arrivals; `wait_for(n)` blocks until `n` have arrived.
class arrivals {
 public:
  void arrive() {
    std::lock_guard lock(m_);
    ++n_;
    cv_.notify_all();
  }
  void wait_for(std::size_t n) {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return n_ >= n; });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::size_t n_ = 0;
};

class thread_pool_test : public io_test {
 protected:
  /// Runs the test's io_context on a second thread until the end of the test, so the test's own
  /// thread may block while the pool completes on the io_context.
  void start_loop() {
    guard_.emplace(ctx().get_executor());
    loop_ = std::thread([this] { ctx().run(); });
  }
  void TearDown() override {
    if (loop_.joinable()) {
      guard_.reset();
      ctx().stop();
      loop_.join();
    }
    io_test::TearDown();
  }

 private:
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard_;
  std::thread loop_;
};

// --- submit ----------------------------------------------------------------------------------

TEST_F(thread_pool_test, submit_gives_the_value_through_get) {
  thread_pool pool({.workers = 2});
  EXPECT_EQ(pool.size(), 2u);
  auto f = pool.submit([](int a, int b) { return a + b; }, 2, 3);
  auto g = pool.submit(square, 7);
  bool ran = false;
  auto v = pool.submit([&ran] { ran = true; });
  EXPECT_EQ(f.get(), 5);
  EXPECT_EQ(g.get(), 49);
  v.get();
  EXPECT_TRUE(ran);
  EXPECT_TRUE(f.done());
  EXPECT_FALSE(f.exception());
}

TEST_F(thread_pool_test, submit_takes_captures_move_only_callables_and_copies_of_arguments) {
  thread_pool pool({.workers = 2});
  const std::string prefix = "n=";
  auto f = pool.submit([prefix](std::unique_ptr<int> p) { return prefix + std::to_string(*p); },
                       std::make_unique<int>(4));
  auto g = pool.submit([p = std::make_unique<int>(5)] { return *p; });
  std::vector<int> v{1, 2};
  auto h = pool.submit(
      [](std::vector<int> w) {
        w.push_back(3);
        return w.size();
      },
      v);
  int target = 0;
  auto r = pool.submit([](int& t) { t = 8; }, std::ref(target));
  EXPECT_EQ(f.get(), "n=4");
  EXPECT_EQ(g.get(), 5);
  EXPECT_EQ(h.get(), 3u);
  EXPECT_EQ(v.size(), 2u) << "the task works on its own copy of the argument";
  r.get();
  EXPECT_EQ(target, 8) << "std::ref passes a reference";
}

TEST_F(thread_pool_test, exceptions_reach_the_future_as_themselves) {
  struct custom_error : std::runtime_error {
    using std::runtime_error::runtime_error;
    int detail = 7;
  };
  thread_pool pool({.workers = 1});
  auto f = pool.submit([]() -> int { throw custom_error("task failed"); });
  try {
    f.get();
    ADD_FAILURE() << "get() did not throw";
  } catch (const custom_error& e) {
    EXPECT_STREQ(e.what(), "task failed");
    EXPECT_EQ(e.detail, 7);
  }
  EXPECT_TRUE(f.exception());
  auto g = pool.submit([] { throw std::logic_error("void failed"); });
  EXPECT_THROW(g.get(), std::logic_error);
}

TEST_F(thread_pool_test, co_await_gives_the_value_on_the_given_executor) {
  thread_pool pool(ex(), {.workers = 2});
  EXPECT_EQ(pool.get_executor(), ex());
  bool callback_on_loop = false;
  auto v = run([&]() -> asio::awaitable<int> {
    auto first = pool.submit(square, 3);
    const int a = co_await std::move(first);
    auto second = pool.submit(square, 4);
    second.add_done_callback(
        [&] { callback_on_loop = ctx().get_executor().running_in_this_thread(); });
    const int b = co_await second.async_get();
    auto failing = pool.submit([]() -> int { throw std::runtime_error("no"); });
    int c = 0;
    try {
      c = co_await failing.async_get();
    } catch (const std::runtime_error&) {
      c = -1;
    }
    co_return a + b + c;
  }());
  EXPECT_EQ(v, 24);
  EXPECT_TRUE(run_until([&] { return callback_on_loop; }));
}

TEST_F(thread_pool_test, a_pool_without_an_executor_completes_on_its_own_threads) {
  std::mutex m;
  std::set<std::thread::id> threads;
  thread_pool pool({.workers = 2, .initializer = [&] {
                      std::lock_guard lock(m);
                      threads.insert(std::this_thread::get_id());
                    }});
  std::promise<std::thread::id> callback_thread;
  auto f = pool.submit(square, 5);
  f.add_done_callback([&] { callback_thread.set_value(std::this_thread::get_id()); });
  EXPECT_EQ(f.get(), 25);
  const auto id = callback_thread.get_future().get();
  std::lock_guard lock(m);
  EXPECT_EQ(threads.count(id), 1u) << "the done callback ran on one of the pool's threads";
  EXPECT_NE(id, std::this_thread::get_id());
}

TEST_F(thread_pool_test, a_task_of_a_pool_with_an_executor_may_wait_for_another) {
  start_loop();
  thread_pool pool(ex(), {.workers = 2});
  auto f = pool.submit([&pool] { return pool.submit(square, 3).get(); });
  EXPECT_EQ(f.get(), 9);
}

TEST_F(thread_pool_test, a_task_of_a_pool_without_an_executor_cannot_block_on_its_futures) {
  // One thread: the inner task cannot be done when the outer one asks for it.
  thread_pool pool({.workers = 1});
  auto f = pool.submit([&pool] { return pool.submit(square, 3).get(); });
  EXPECT_THROW(f.get(), std::logic_error);
}

// --- cancel and shutdown -------------------------------------------------------------------

TEST_F(thread_pool_test, cancel_works_until_a_thread_takes_the_task) {
  gate g;
  arrivals started;
  thread_pool pool({.workers = 1});
  open_at_exit opener{g};
  auto blocker = pool.submit([&] {
    started.arrive();
    g.wait();
    return 1;
  });
  started.wait_for(1);
  bool ran = false;
  auto queued = pool.submit([&ran] {
    ran = true;
    return 2;
  });
  EXPECT_TRUE(blocker.running());
  EXPECT_FALSE(blocker.cancel()) << "a running task cannot be cancelled";
  EXPECT_FALSE(queued.running());
  EXPECT_TRUE(queued.cancel());
  EXPECT_TRUE(queued.cancelled());
  EXPECT_TRUE(queued.done());
  EXPECT_EQ(error_of([&] { queued.get(); }), asio::error::operation_aborted);
  g.open();
  EXPECT_EQ(blocker.get(), 1);
  pool.shutdown();
  EXPECT_FALSE(ran) << "a cancelled task never runs";
  const auto s = pool.stats();
  EXPECT_EQ(s.cancelled, 1u);
  EXPECT_EQ(s.done, 1u);
}

TEST_F(thread_pool_test, shutdown_waits_for_the_queued_tasks) {
  std::atomic<int> count{0};
  thread_pool pool({.workers = 2});
  std::vector<future<void>> fs;
  for (int i = 0; i < 50; ++i) fs.push_back(pool.submit([&count] { ++count; }));
  pool.shutdown(true);
  EXPECT_EQ(count.load(), 50);
  for (auto& f : fs) EXPECT_TRUE(f.done());
  EXPECT_EQ(pool.stats().done, 50u);
}

TEST_F(thread_pool_test, shutdown_without_wait_returns_while_tasks_still_run) {
  gate g;
  arrivals started;
  thread_pool pool({.workers = 1});
  open_at_exit opener{g};
  auto blocker = pool.submit([&] {
    started.arrive();
    g.wait();
    return 1;
  });
  auto queued = pool.submit(square, 6);
  started.wait_for(1);
  pool.shutdown(false);  // returns although the blocker cannot finish yet
  EXPECT_FALSE(blocker.done());
  EXPECT_FALSE(queued.done());
  EXPECT_THROW(pool.submit(square, 1), std::logic_error);
  g.open();
  EXPECT_EQ(blocker.get(), 1);
  EXPECT_EQ(queued.get(), 36) << "tasks accepted before the shutdown still run";
}

TEST_F(thread_pool_test, shutdown_with_cancel_futures_cancels_the_queued_tasks) {
  gate g;
  arrivals started;
  thread_pool pool({.workers = 1});
  open_at_exit opener{g};
  auto blocker = pool.submit([&] {
    started.arrive();
    g.wait();
    return 1;
  });
  started.wait_for(1);
  std::vector<future<int>> queued;
  for (int i = 0; i < 3; ++i) queued.push_back(pool.submit(square, i));
  pool.shutdown(false, true);
  for (auto& f : queued) EXPECT_TRUE(f.cancelled());
  EXPECT_FALSE(blocker.done()) << "the running task goes on";
  g.open();
  EXPECT_EQ(blocker.get(), 1);
  pool.shutdown(true);
  const auto s = pool.stats();
  EXPECT_EQ(s.submitted, 4u);
  EXPECT_EQ(s.cancelled, 3u);
  EXPECT_EQ(s.done, 1u);
}

TEST_F(thread_pool_test, submit_and_map_after_shutdown_throw_logic_error) {
  thread_pool pool({.workers = 1});
  pool.shutdown();
  EXPECT_THROW(pool.submit(square, 1), std::logic_error);
  EXPECT_THROW(pool.map(square, std::vector<int>{1, 2}), std::logic_error);
  pool.shutdown();  // again: nothing happens
}

TEST_F(thread_pool_test, async_shutdown_completes_once_the_tasks_finish) {
  thread_pool pool(ex(), {.workers = 2});
  std::vector<future<int>> fs;
  for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(square, i));
  bool all_done = false;
  run([&]() -> asio::awaitable<void> {
    co_await pool.async_shutdown(false, asio::use_awaitable);
    all_done = std::all_of(fs.begin(), fs.end(), [](const auto& f) { return f.done(); });
  }());
  EXPECT_TRUE(all_done);
  EXPECT_THROW(pool.submit(square, 1), std::logic_error);
  // Once finished, it completes at once.
  run([&]() -> asio::awaitable<void> { co_await pool.async_shutdown(); }());
}

TEST_F(thread_pool_test, shutdown_from_a_done_callback_does_not_block) {
  gate g;
  arrivals started;
  thread_pool pool({.workers = 2});
  open_at_exit opener{g};
  auto blocker = pool.submit([&] {
    started.arrive();
    g.wait();
  });
  started.wait_for(1);
  std::promise<void> returned;
  auto quick = pool.submit(square, 2);
  // The callback runs on a pool thread: shutdown(true) there must not wait for the blocker,
  // which waits for the gate the callback opens afterwards.
  quick.add_done_callback([&] {
    pool.shutdown(true);
    g.open();
    returned.set_value();
  });
  returned.get_future().get();
  blocker.get();
}

TEST_F(thread_pool_test, shutdown_from_a_done_callback_on_the_executor_does_not_block) {
  gate g;
  arrivals started;
  thread_pool pool(ex(), {.workers = 2});
  open_at_exit opener{g};
  auto blocker = pool.submit([&] {
    started.arrive();
    g.wait();
  });
  started.wait_for(1);
  bool returned = false;
  run([&]() -> asio::awaitable<void> {
    auto quick = pool.submit(square, 2);
    quick.add_done_callback([&] {
      pool.shutdown(true);
      g.open();
      returned = true;
    });
    co_await blocker.async_get();
  }());
  EXPECT_TRUE(returned);
}

TEST_F(thread_pool_test, submit_from_a_done_callback) {
  thread_pool pool({.workers = 2});
  std::promise<future<int>> second;
  auto first = pool.submit(square, 3);
  first.add_done_callback(
      [&](const future<int>& f) { second.set_value(pool.submit(square, f.get())); });
  EXPECT_EQ(second.get_future().get().get(), 81);
}

TEST_F(thread_pool_test, the_destructor_runs_the_queued_tasks) {
  std::vector<future<int>> fs;
  {
    thread_pool pool({.workers = 1});
    for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(square, i));
  }
  for (int i = 0; i < 20; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i * i);
}

TEST_F(thread_pool_test, destroyed_on_one_of_its_threads_it_finishes_its_work_detached) {
  gate g;
  arrivals started;
  auto pool = std::make_shared<thread_pool>(thread_pool_options{.workers = 1});
  // The task's callable holds the last reference: it is destroyed on the pool's thread.
  auto holder = pool->submit([&, keep = pool] {
    started.arrive();
    g.wait();
    return 1;
  });
  std::vector<future<int>> queued;
  for (int i = 0; i < 5; ++i) queued.push_back(pool->submit(square, i));
  std::promise<void> last_done;
  queued.back().add_done_callback([&] { last_done.set_value(); });
  started.wait_for(1);
  pool.reset();
  g.open();
  // The threads end, and take the pool's executor with them, once this callback has run: from
  // here on only done futures are asked for their values (one thread: FIFO).
  last_done.get_future().get();
  EXPECT_EQ(holder.get(), 1);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(queued[static_cast<std::size_t>(i)].get(), i * i);
}

TEST_F(thread_pool_test, destroyed_on_a_thread_of_its_executor_it_does_not_block) {
  gate g;
  arrivals started;
  auto v = run([&]() -> asio::awaitable<int> {
    auto pool = std::make_unique<thread_pool>(ex(), thread_pool_options{.workers = 1});
    auto blocker = pool->submit([&] {
      started.arrive();
      g.wait();
      return 1;
    });
    auto queued = pool->submit(square, 3);
    started.wait_for(1);
    pool.reset();  // on the event loop: it must not wait for the blocker
    g.open();
    const int a = co_await blocker.async_get();
    const int b = co_await queued.async_get();
    co_return a + b;
  }());
  EXPECT_EQ(v, 10);
}

TEST_F(thread_pool_test, move_assignment_shuts_the_old_pool_down) {
  thread_pool a({.workers = 1});
  thread_pool b({.workers = 2});
  auto fa = a.submit(square, 2);
  auto fb = b.submit(square, 3);
  b = std::move(a);
  EXPECT_EQ(fb.get(), 9) << "the old pool finished its work";
  EXPECT_EQ(b.size(), 1u);
  EXPECT_EQ(b.submit(square, 4).get(), 16);
  EXPECT_EQ(fa.get(), 4);
}

// --- initializer -----------------------------------------------------------------------------

TEST_F(thread_pool_test, the_initializer_runs_once_on_each_thread_before_its_tasks) {
  std::mutex m;
  std::multiset<std::thread::id> initialized;
  thread_local bool ready = false;
  std::vector<future<bool>> fs;
  {
    thread_pool pool({.workers = 3, .initializer = [&] {
                        std::lock_guard lock(m);
                        initialized.insert(std::this_thread::get_id());
                        ready = true;
                      }});
    for (int i = 0; i < 30; ++i) fs.push_back(pool.submit([] { return ready; }));
  }
  for (auto& f : fs) EXPECT_TRUE(f.get());
  EXPECT_EQ(initialized.size(), 3u);
  EXPECT_EQ(std::set<std::thread::id>(initialized.begin(), initialized.end()).size(), 3u);
}

TEST_F(thread_pool_test, a_failing_initializer_breaks_the_pool) {
  thread_pool pool({.workers = 2, .initializer = [] { throw std::runtime_error("no database"); }});
  std::vector<future<int>> fs;
  for (int i = 0; i < 10; ++i) fs.push_back(pool.submit(square, i));
  for (auto& f : fs) {
    try {
      f.get();
      ADD_FAILURE() << "a task ran on a broken pool";
    } catch (const boost::system::system_error& e) {
      EXPECT_EQ(e.code(), errc::pool_broken);
      EXPECT_NE(std::string(e.what()).find("no database"), std::string::npos) << e.what();
    }
  }
  auto later = pool.submit(square, 1);
  EXPECT_EQ(error_of([&] { later.get(); }), errc::pool_broken);
  pool.shutdown();
  const auto s = pool.stats();
  EXPECT_EQ(s.submitted, 11u);
  EXPECT_EQ(s.failed, 11u);
  EXPECT_EQ(s.done, 0u);
}

// --- map -------------------------------------------------------------------------------------

std::vector<int> squares(int n) {
  std::vector<int> v;
  for (int i = 0; i < n; ++i) v.push_back(i * i);
  return v;
}

std::vector<int> iota_vector(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

TEST_F(thread_pool_test, map_gives_the_results_in_input_order) {
  thread_pool pool({.workers = 3});
  const auto inputs = iota_vector(100);
  for (std::size_t chunksize : {1u, 7u, 100u, 1000u}) {
    std::vector<int> out;
    for (int r : pool.map(square, inputs, {.chunksize = chunksize})) out.push_back(r);
    EXPECT_EQ(out, squares(100)) << "chunksize " << chunksize;
  }
  // An rvalue range is moved into the stream.
  std::vector<int> out;
  auto stream = pool.map([](int x) { return x * x; }, iota_vector(10));
  while (auto r = stream.next()) out.push_back(*r);
  EXPECT_EQ(out, squares(10));
}

TEST_F(thread_pool_test, unordered_map_gives_every_result) {
  thread_pool pool({.workers = 3});
  std::vector<int> out;
  for (int r : pool.map(square, iota_vector(100), {.chunksize = 3, .ordered = false}))
    out.push_back(r);
  std::sort(out.begin(), out.end());
  EXPECT_EQ(out, squares(100));
}

TEST_F(thread_pool_test, map_pulls_an_unbounded_input_only_ahead_of_the_consumer) {
  thread_pool pool({.workers = 2});
  std::atomic<std::size_t> pulled{0};
  auto inputs = std::views::iota(0) | std::views::transform([&pulled](int i) {
                  ++pulled;
                  return i;
                });
  constexpr std::size_t chunksize = 2, buffersize = 3;
  auto stream = pool.map(square, inputs, {.chunksize = chunksize, .buffersize = buffersize});
  for (int i = 0; i < 50; ++i) {
    auto r = stream.next();
    ASSERT_TRUE(r);
    EXPECT_EQ(*r, i * i);
    const std::size_t taken = static_cast<std::size_t>(i) + 1;
    EXPECT_LE(pulled.load(), taken + (buffersize + 1) * chunksize);
  }
}

TEST_F(thread_pool_test, map_ends_at_the_first_failure) {
  thread_pool pool({.workers = 2});
  auto stream = pool.map(
      [](int x) {
        if (x == 5) throw std::runtime_error("five");
        return x;
      },
      iota_vector(20));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(stream.next(), i);
  EXPECT_THROW(stream.next(), std::runtime_error);
}

TEST_F(thread_pool_test, starmap_unpacks_tuples) {
  thread_pool pool({.workers = 2});
  std::vector<std::tuple<int, std::string>> inputs{{1, "a"}, {2, "b"}, {3, "c"}};
  std::vector<std::string> out;
  for (auto& r : pool.starmap([](int n, const std::string&s) { return s + std::to_string(n); },
                              inputs, {.chunksize = 2}))
    out.push_back(r);
  EXPECT_EQ(out, (std::vector<std::string>{"a1", "b2", "c3"}));
}

TEST_F(thread_pool_test, map_reports_progress_for_every_chunk) {
  std::mutex m;
  std::vector<std::pair<std::size_t, std::optional<std::size_t>>> reports;
  {
    thread_pool pool({.workers = 2});
    map_options o{.chunksize = 4, .buffersize = 1};
    o.progress = [&](std::size_t done, std::optional<std::size_t> total) {
      std::lock_guard lock(m);
      reports.emplace_back(done, total);
    };
    std::vector<int> out;
    for (int r : pool.map(square, iota_vector(20), o)) out.push_back(r);
    EXPECT_EQ(out, squares(20));
  }  // the pool's destructor runs the callbacks still queued
  ASSERT_EQ(reports.size(), 5u);
  // A sized input: every report knows the total, even while input remains unread.
  std::size_t most = 0;
  for (const auto& [done, total] : reports) {
    EXPECT_LE(done, 20u);
    EXPECT_EQ(total, 20u) << "after " << done;
    most = std::max(most, done);
  }
  EXPECT_EQ(most, 20u);
}

TEST_F(thread_pool_test, map_timeout_fails_the_wait_not_the_work) {
  gate g;
  arrivals started;
  thread_pool pool({.workers = 1});
  open_at_exit opener{g};
  auto stream = pool.map(
      [&](int x) {
        started.arrive();
        g.wait();
        return x;
      },
      iota_vector(2), {.timeout = std::chrono::milliseconds(1)});
  EXPECT_EQ(error_of([&] { stream.next(); }), errc::timed_out);
  g.open();
}

TEST_F(thread_pool_test, map_stream_in_a_coroutine_on_the_given_executor) {
  thread_pool pool(ex(), {.workers = 2});
  auto out = run([&]() -> asio::awaitable<std::vector<int>> {
    std::vector<int> v;
    auto stream = pool.map(square, iota_vector(30), {.chunksize = 4});
    while (auto r = co_await stream.async_next()) v.push_back(*r);
    co_return v;
  }());
  EXPECT_EQ(out, squares(30));
}

TEST_F(thread_pool_test, map_batches_give_every_result_in_order_then_an_empty_batch) {
  thread_pool pool(ex(), {.workers = 2});
  auto batches = run([&]() -> asio::awaitable<std::vector<std::vector<int>>> {
    std::vector<std::vector<int>> out;
    auto stream = pool.map(square, iota_vector(50), {.chunksize = 7});
    for (;;) {
      std::vector<int> b = co_await stream.async_next_batch();
      out.push_back(std::move(b));
      if (out.back().empty()) break;
    }
    co_return out;
  }());
  ASSERT_FALSE(batches.empty());
  EXPECT_TRUE(batches.back().empty());
  std::vector<int> all;
  for (auto& b : batches) all.insert(all.end(), b.begin(), b.end());
  EXPECT_EQ(all, squares(50));
  // Every batch but the last holds at least one result; a chunk's results come together.
  for (std::size_t i = 0; i + 1 < batches.size(); ++i) EXPECT_FALSE(batches[i].empty());
  EXPECT_LT(batches.size(), 50u);
}

TEST_F(thread_pool_test, map_batch_rethrows_a_failure_at_its_position) {
  thread_pool pool(ex(), {.workers = 1});
  auto got = run([&]() -> asio::awaitable<std::pair<std::vector<int>, bool>> {
    std::vector<int> seen;
    bool threw = false;
    auto stream = pool.map([](int x) { return x == 10 ? throw std::runtime_error("ten") : x; },
                           iota_vector(20), {.chunksize = 5});
    try {
      for (;;) {
        std::vector<int> b = co_await stream.async_next_batch();
        if (b.empty()) break;
        seen.insert(seen.end(), b.begin(), b.end());
      }
    } catch (const std::runtime_error&) {
      threw = true;
    }
    co_return std::pair{seen, threw};
  }());
  EXPECT_TRUE(got.second);
  EXPECT_EQ(got.first, iota_vector(10));
}

// --- load ------------------------------------------------------------------------------------

TEST_F(thread_pool_test, an_io_context_run_by_four_threads) {
  thread_pool pool(ex(), {.workers = 4});
  constexpr int n = 400;
  std::atomic<int> sum{0};
  std::atomic<int> callbacks{0};
  std::atomic<bool> off_loop{false};
  auto total = run(
      [&]() -> asio::awaitable<int> {
        std::vector<future<int>> fs;
        for (int i = 0; i < n; ++i) {
          fs.push_back(pool.submit(square, i));
          fs.back().add_done_callback([&] {
            if (!ctx().get_executor().running_in_this_thread()) off_loop = true;
            ++callbacks;
          });
        }
        for (auto& f : fs) {
          const int v = co_await f.async_get();
          sum += v;
        }
        co_await pool.async_shutdown();
        co_return sum.load();
      }(),
      60s, 4);
  int expected = 0;
  for (int i = 0; i < n; ++i) expected += i * i;
  EXPECT_EQ(total, expected);
  EXPECT_TRUE(run_until([&] { return callbacks.load() == n; }));
  EXPECT_FALSE(off_loop.load());
}

TEST_F(thread_pool_test, ten_thousand_tasks_each_resolve_exactly_once) {
  constexpr std::size_t n = 10000;
  std::vector<std::atomic<int>> resolved(n);
  std::vector<future<std::size_t>> fs;
  fs.reserve(n);
  {
    thread_pool pool({.workers = 4});
    for (std::size_t i = 0; i < n; ++i) {
      fs.push_back(pool.submit([i] { return i; }));
      fs.back().add_done_callback([&resolved, i] { ++resolved[i]; });
      if (i % 7 == 0) fs.back().cancel();  // races with the threads: either outcome is fine
    }
    fs[n / 2].wait();           // FIFO: the first half has been taken
    pool.shutdown(true, true);  // and cancels what is still queued
    const auto s = pool.stats();
    EXPECT_EQ(s.submitted, n);
    EXPECT_EQ(s.queued + s.running, 0u);
    EXPECT_EQ(s.done + s.failed + s.cancelled, n);
    EXPECT_EQ(s.failed, 0u);
  }  // the destructor runs the done callbacks still queued
  std::size_t cancelled = 0;
  for (std::size_t i = 0; i < n; ++i) {
    EXPECT_EQ(resolved[i].load(), 1) << "task " << i;
    ASSERT_TRUE(fs[i].done());
    if (fs[i].cancelled())
      ++cancelled;
    else
      EXPECT_EQ(fs[i].get(), i);
  }
  EXPECT_LT(cancelled, n / 2 + n / 7 + 1);
}

// --- stats -----------------------------------------------------------------------------------

TEST_F(thread_pool_test, stats_add_up_while_tasks_wait_and_after) {
  gate g;
  arrivals started;
  thread_pool pool({.workers = 1});
  open_at_exit opener{g};
  auto blocker = pool.submit([&] {
    started.arrive();
    g.wait();
  });
  started.wait_for(1);
  auto a = pool.submit(square, 1);
  auto b = pool.submit([]() -> int { throw std::runtime_error("no"); });
  auto c = pool.submit(square, 3);
  EXPECT_TRUE(c.cancel());
  auto s = pool.stats();
  EXPECT_EQ(s.submitted, 4u);
  EXPECT_EQ(s.running, 1u);
  EXPECT_EQ(s.queued, 2u);
  EXPECT_EQ(s.cancelled, 1u);
  EXPECT_EQ(s.done + s.failed, 0u);
  EXPECT_EQ(s.workers, 1u);
  EXPECT_EQ(s.worker_restarts, 0u);
  g.open();
  pool.shutdown();
  s = pool.stats();
  EXPECT_EQ(s.submitted, 4u);
  EXPECT_EQ(s.running + s.queued, 0u);
  EXPECT_EQ(s.done, 2u);
  EXPECT_EQ(s.failed, 1u);
  EXPECT_EQ(s.cancelled, 1u);
  EXPECT_EQ(s.worker_restarts, 0u);
}

TEST_F(thread_pool_test, size_defaults_to_the_available_cpus) {
  thread_pool pool;
  EXPECT_EQ(pool.size(), coproc::available_cpus());
  EXPECT_EQ(pool.stats().workers, pool.size());
  EXPECT_EQ(pool.submit(square, 2).get(), 4);
}

}  // namespace
