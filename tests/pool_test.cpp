#include <coproc/pool.hpp>

#include <coproc/error.hpp>
#include <coproc/future.hpp>
#include <coproc/process_pool.hpp>

#include "fixture.hpp"

#include <boost/asio/post.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <future>
#include <mutex>
#include <numeric>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace {

using namespace coproc_test;
using coproc::errc;
using coproc::pool;

// --- task functions (they run in forked workers) ---------------------------------------------

int square(int x) { return x * x; }
int add(int a, int b) { return a + b; }
std::string label(int n, std::string s) { return s + std::to_string(n); }
void nothing() {}
int fail(int) { throw std::runtime_error("boom"); }
int fail_at_five(int x) {
  if (x == 5) throw std::runtime_error("five");
  return x;
}

/// Says "started" (a byte on `started_fd`), then waits for a byte on `gate_fd` and returns it.
int wait_at_gate(int gate_fd, int started_fd) {
  char c = 1;
  while (::write(started_fd, &c, 1) < 0 && errno == EINTR) {
  }
  while (::read(gate_fd, &c, 1) < 0 && errno == EINTR) {
  }
  return c;
}

// --- test side -------------------------------------------------------------------------------

/// Blocks until `n` bytes have arrived on `fd`.
void read_bytes(int fd, std::size_t n) {
  char c;
  while (n > 0) {
    const auto r = ::read(fd, &c, 1);
    if (r == 1)
      --n;
    else if (r == 0 || errno != EINTR)
      throw std::runtime_error("read_bytes: the pipe ended");
  }
}

/// Writes `n` bytes of value `v` to `fd`.
void write_bytes(int fd, std::size_t n, char v = 7) {
  while (n > 0) {
    if (::write(fd, &v, 1) == 1)
      --n;
    else if (errno != EINTR)
      throw std::runtime_error("write_bytes: cannot write");
  }
}

/// The pipes of gated tasks: tasks say "started" on one and wait for a byte on the other. The
/// workers inherit them at fork, so they must exist before the pool.
struct gates {
  raw_pipe gate;
  raw_pipe started;
  std::tuple<int, int> fds() const { return {gate.read_end(), started.write_end()}; }
  void wait_started(std::size_t n) { read_bytes(started.read_end(), n); }
  void release(std::size_t n, char v = 7) { write_bytes(gate.write_end(), n, v); }
};

/// Releases plenty of gated tasks when the test's scope ends. Declared after the pool, it runs
/// before the pool's destructor, so a failed assertion never leaves that destructor waiting.
struct release_at_exit {
  gates& g;
  ~release_at_exit() { g.release(64); }
};

/// The id of the thread that runs the pool's event loop.
std::thread::id loop_thread(pool& p) {
  std::promise<std::thread::id> id;
  asio::post(p.executor().get_executor(), [&] { id.set_value(std::this_thread::get_id()); });
  return id.get_future().get();
}

std::vector<int> iota_vector(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

std::vector<int> squares(int n) {
  std::vector<int> v;
  for (int i = 0; i < n; ++i) v.push_back(i * i);
  return v;
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

class pool_test : public io_test {};

// --- apply -----------------------------------------------------------------------------------

TEST_F(pool_test, apply_blocks_for_the_value) {
  pool p({.workers = 2});
  EXPECT_EQ(p.size(), 2u);
  EXPECT_EQ(p.apply(add, 2, 3), 5);
  EXPECT_EQ(p.apply([](int x) { return x + 1; }, 41), 42);
  p.apply(nothing);
  EXPECT_THROW(p.apply(fail, 1), std::runtime_error);
}

TEST_F(pool_test, apply_async_runs_the_callback_on_the_loop_thread) {
  pool p({.workers = 2});
  const auto loop = loop_thread(p);
  std::optional<int> seen;
  std::thread::id callback_thread;
  bool error_called = false;
  auto r = p.apply_async(
      square, std::tuple{7},
      [&](const int& v) {
        seen = v;
        callback_thread = std::this_thread::get_id();
      },
      [&](std::exception_ptr) { error_called = true; });
  EXPECT_EQ(r.get(), 49);
  // As in Python, the callback has run once the result is ready.
  EXPECT_EQ(seen, 49);
  EXPECT_EQ(callback_thread, loop);
  EXPECT_FALSE(error_called);
  EXPECT_TRUE(r.ready());
  EXPECT_TRUE(r.successful());
}

TEST_F(pool_test, apply_async_runs_the_error_callback_for_a_failure) {
  pool p({.workers = 1});
  const auto loop = loop_thread(p);
  bool callback_called = false;
  std::string error;
  std::thread::id error_thread;
  auto r = p.apply_async(
      fail, std::tuple{1}, [&](const int&) { callback_called = true; },
      [&](std::exception_ptr e) {
        error = what_of(e);
        error_thread = std::this_thread::get_id();
      });
  r.wait();
  EXPECT_TRUE(r.ready());
  EXPECT_FALSE(r.successful());
  EXPECT_THROW(r.get(), std::runtime_error);
  EXPECT_EQ(error, "boom");
  EXPECT_EQ(error_thread, loop);
  EXPECT_FALSE(callback_called);
}

TEST_F(pool_test, apply_async_of_a_void_function_and_without_callbacks) {
  pool p({.workers = 1});
  bool called = false;
  auto r = p.apply_async(nothing, {}, [&] { called = true; });
  r.get();
  EXPECT_TRUE(called);
  auto plain = p.apply_async(add, std::tuple{1, 2});
  EXPECT_EQ(plain.get(), 3);
  EXPECT_EQ(plain.get_future().get(), 3);
}

TEST_F(pool_test, exactly_one_callback_runs_for_each_task) {
  pool p({.workers = 2});
  constexpr int n = 200;
  std::vector<int> value_calls(n), error_calls(n);  // touched on the loop thread only
  std::vector<pool::async_result<int>> rs;
  for (int i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    rs.push_back(p.apply_async(
        i % 3 == 0 ? fail : square, std::tuple{i}, [&, k](const int&) { ++value_calls[k]; },
        [&, k](std::exception_ptr) { ++error_calls[k]; }));
  }
  for (auto& r : rs) r.wait();
  for (int i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    EXPECT_EQ(value_calls[k] + error_calls[k], 1) << "task " << i;
    EXPECT_EQ(error_calls[k], i % 3 == 0 ? 1 : 0) << "task " << i;
    EXPECT_EQ(rs[k].successful(), i % 3 != 0);
  }
}

// --- async_result ----------------------------------------------------------------------------

TEST_F(pool_test, get_with_a_timeout_times_out_while_the_task_runs) {
  gates g;
  pool p({.workers = 1});
  release_at_exit releaser{g};
  auto r = p.apply_async(wait_at_gate, g.fds());
  g.wait_started(1);
  try {
    r.get(std::chrono::milliseconds(10));
    ADD_FAILURE() << "get(timeout) did not time out";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), errc::timed_out);
  }
  EXPECT_FALSE(r.wait(std::chrono::milliseconds(1)));
  EXPECT_FALSE(r.ready());
  EXPECT_THROW((void)r.successful(), std::logic_error) << "Python raises ValueError";
  g.release(1, 42);
  EXPECT_EQ(r.get(), 42);
  EXPECT_TRUE(r.ready());
  EXPECT_TRUE(r.successful());
}

// --- life cycle ------------------------------------------------------------------------------

TEST_F(pool_test, join_without_close_throws) {
  pool p({.workers = 1});
  EXPECT_THROW(p.join(), std::logic_error);
  auto r = p.apply_async(square, std::tuple{3});
  p.close();
  p.join();
  EXPECT_TRUE(r.ready()) << "join waits for the work submitted";
  EXPECT_EQ(r.get(), 9);
  EXPECT_EQ(p.executor().stats().workers, 0u) << "join waits for the workers to exit";
}

TEST_F(pool_test, close_refuses_every_new_call) {
  pool p({.workers = 1});
  const std::vector<int> xs{1, 2};
  const std::vector<std::tuple<int, int>> ts{{1, 2}};
  p.close();
  EXPECT_THROW(p.apply(square, 1), std::logic_error);
  EXPECT_THROW(p.apply_async(square, std::tuple{1}), std::logic_error);
  EXPECT_THROW(p.map(square, xs), std::logic_error);
  EXPECT_THROW(p.map_async(square, xs), std::logic_error);
  EXPECT_THROW(p.imap(square, xs), std::logic_error);
  EXPECT_THROW(p.imap_unordered(square, xs), std::logic_error);
  EXPECT_THROW(p.starmap(add, ts), std::logic_error);
  EXPECT_THROW(p.starmap_async(add, ts), std::logic_error);
  p.join();
}

TEST_F(pool_test, terminate_fails_the_running_tasks_and_nothing_hangs) {
  gates g;
  pool p({.workers = 2});
  release_at_exit releaser{g};
  std::atomic<int> values{0}, errors{0};
  std::vector<pool::async_result<int>> rs;
  for (int i = 0; i < 4; ++i)
    rs.push_back(p.apply_async(
        wait_at_gate, g.fds(), [&](const int&) { ++values; },
        [&](std::exception_ptr) { ++errors; }));
  g.wait_started(2);
  p.terminate();
  p.join();
  // The two tasks that ran died with their workers; the two others (queued, or sent ahead to
  // a worker) failed or were cancelled.
  int died = 0, other = 0;
  for (auto& r : rs) {
    r.wait();
    EXPECT_FALSE(r.successful());
    try {
      r.get();
    } catch (const coproc::worker_died&) {
      ++died;
    } catch (...) {
      ++other;
    }
  }
  EXPECT_EQ(died, 2);
  EXPECT_EQ(other, 2);
  EXPECT_EQ(values.load(), 0);
  EXPECT_EQ(errors.load(), 4);
  EXPECT_THROW(p.apply(square, 1), std::logic_error);
  EXPECT_TRUE(p.executor().worker_pids().empty());
}

TEST_F(pool_test, the_destructor_closes_and_joins) {
  std::optional<pool::async_result<int>> r;
  {
    pool p({.workers = 1});
    r = p.apply_async(square, std::tuple{3});
  }
  EXPECT_TRUE(r->ready());
  EXPECT_EQ(r->get(), 9);
}

TEST_F(pool_test, executor_gives_the_process_pool) {
  pool p({.workers = 2});
  EXPECT_EQ(p.executor().size(), 2u);
  EXPECT_EQ(p.executor().submit(square, 4).get(), 16);
}

// --- map -------------------------------------------------------------------------------------

TEST_F(pool_test, the_default_chunksize_is_pythons) {
  using coproc::detail::pool_chunksize;
  EXPECT_EQ(pool_chunksize(100, 2), 13u);  // ceil(100 / 8)
  EXPECT_EQ(pool_chunksize(8, 2), 1u);
  EXPECT_EQ(pool_chunksize(9, 2), 2u);
  EXPECT_EQ(pool_chunksize(1, 16), 1u);
  EXPECT_EQ(pool_chunksize(0, 4), 1u);
}

TEST_F(pool_test, map_gives_the_same_results_with_any_chunksize) {
  pool p({.workers = 2});
  const auto inputs = iota_vector(100);
  for (std::size_t chunksize : {0u, 1u, 7u, 100u, 1000u})
    EXPECT_EQ(p.map(square, inputs, chunksize), squares(100)) << "chunksize " << chunksize;
  EXPECT_EQ(p.map(square, std::views::iota(0, 10)), squares(10));
  EXPECT_TRUE(p.map(square, std::vector<int>{}).empty());
}

TEST_F(pool_test, map_rethrows_the_first_failure) {
  pool p({.workers = 2});
  EXPECT_THROW(p.map(fail_at_five, iota_vector(20), 1), std::runtime_error);
}

TEST_F(pool_test, map_async_runs_the_callback_with_every_value_on_the_loop_thread) {
  pool p({.workers = 2});
  const auto loop = loop_thread(p);
  std::vector<int> seen;
  std::thread::id callback_thread;
  int errors = 0;
  auto r = p.map_async(
      square, iota_vector(50), 0,
      [&](const std::vector<int>& v) {
        seen = v;
        callback_thread = std::this_thread::get_id();
      },
      [&](std::exception_ptr) { ++errors; });
  EXPECT_EQ(r.get(), squares(50));
  EXPECT_EQ(seen, squares(50));
  EXPECT_EQ(callback_thread, loop);
  EXPECT_EQ(errors, 0);
}

TEST_F(pool_test, map_async_runs_the_error_callback_once) {
  pool p({.workers = 2});
  int values = 0, errors = 0;
  std::string error;
  // Two chunks fail (inputs 5 and 15): one error callback, with the first failure.
  auto r = p.map_async(
      [](int x) {
        if (x % 10 == 5) throw std::runtime_error("at " + std::to_string(x));
        return x;
      },
      iota_vector(20), 10, [&](const std::vector<int>&) { ++values; },
      [&](std::exception_ptr e) {
        ++errors;
        error = what_of(e);
      });
  r.wait();
  EXPECT_FALSE(r.successful());
  EXPECT_EQ(values, 0);
  EXPECT_EQ(errors, 1);
  EXPECT_EQ(error, "at 5");
}

TEST_F(pool_test, map_async_of_an_empty_input_gives_an_empty_vector) {
  pool p({.workers = 1});
  std::optional<std::size_t> seen;
  auto r = p.map_async(square, std::vector<int>{}, 0,
                       [&](const std::vector<int>& v) { seen = v.size(); });
  EXPECT_TRUE(r.get().empty());
  EXPECT_EQ(seen, 0u);
}

TEST_F(pool_test, starmap_async_does_not_block_and_submits_everything_at_once) {
  gates g;
  pool p({.workers = 2});
  release_at_exit releaser{g};
  const std::vector<std::tuple<int, int>> inputs(2, g.fds());
  auto r = p.starmap_async(wait_at_gate, inputs, 1);
  g.wait_started(2);  // both tasks run: every chunk was submitted
  EXPECT_FALSE(r.ready());
  // close() and join() right away: the work submitted still completes.
  p.close();
  g.release(2, 5);
  p.join();
  EXPECT_EQ(r.get(), (std::vector<int>{5, 5}));
}

TEST_F(pool_test, starmap_unpacks_tuples) {
  pool p({.workers = 2});
  const std::vector<std::tuple<int, std::string>> inputs{{1, "a"}, {2, "b"}, {3, "c"}};
  EXPECT_EQ(p.starmap(label, inputs), (std::vector<std::string>{"a1", "b2", "c3"}));
  std::vector<std::tuple<int, int>> pairs;
  for (int i = 0; i < 40; ++i) pairs.emplace_back(i, i);
  std::vector<int> expected;
  for (int i = 0; i < 40; ++i) expected.push_back(2 * i);
  EXPECT_EQ(p.starmap(add, pairs), expected);
  EXPECT_EQ(p.starmap(add, pairs, 3), expected);
}

// --- imap ------------------------------------------------------------------------------------

TEST_F(pool_test, imap_gives_results_in_input_order) {
  pool p({.workers = 3});
  const auto inputs = iota_vector(60);
  for (std::size_t chunksize : {1u, 4u}) {
    std::vector<int> out;
    for (int r : p.imap(square, inputs, chunksize)) out.push_back(r);
    EXPECT_EQ(out, squares(60)) << "chunksize " << chunksize;
  }
}

TEST_F(pool_test, imap_reads_an_unbounded_input_lazily) {
  pool p({.workers = 2});
  auto stream = p.imap(square, std::views::iota(0), 4);
  for (int i = 0; i < 30; ++i) EXPECT_EQ(stream.next(), i * i);
}

TEST_F(pool_test, imap_unordered_gives_every_result) {
  pool p({.workers = 3});
  std::vector<int> out;
  for (int r : p.imap_unordered(square, iota_vector(60), 2)) out.push_back(r);
  std::sort(out.begin(), out.end());
  EXPECT_EQ(out, squares(60));
}

}  // namespace
