// coproc::process_pool: submit, map, shutdown, recycling and fault handling.
//
// This executable has its own main: the spawn start method re-executes it, and
// coproc::worker_hook must run first there.
//
// What workers run is plain code: no gtest macro (its results would be lost in the worker).
// Tasks that must stay running while a test acts report their pid on a pipe and block on
// another one until the test lets them through (`gate`): handshakes, not sleeps.
#include <coproc/process_pool.hpp>

#include <coproc/error.hpp>
#include <coproc/future.hpp>
#include <coproc/process.hpp>
#include <coproc/result_stream.hpp>

#include "fixture.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <random>
#include <ranges>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace coproc_test;
using coproc::exit_status;
using coproc::process_pool;
using coproc::start_method;

// --- what the workers run ------------------------------------------------------------------

int square(int x) { return x * x; }
COPROC_REGISTER(square);

int add(int a, int b) { return a + b; }
COPROC_REGISTER(add);

int worker_pid() { return ::getpid(); }
COPROC_REGISTER(worker_pid);

/// The pid of the worker that ran the element (for chunking).
int pid_for(int) { return ::getpid(); }

int not_registered(int x) { return x + 1; }

// Set by a spawn-start initializer in each worker, read by tasks.
int initialized_value = 0;
void set_initialized_value(int v) { initialized_value = v; }
COPROC_REGISTER(set_initialized_value);
int get_initialized_value() { return initialized_value; }
COPROC_REGISTER(get_initialized_value);

void write_text(std::string path, std::string text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::vector<std::string> reversed_words(std::vector<std::string> words) {
  std::reverse(words.begin(), words.end());
  return words;
}

std::vector<std::uint8_t> inverted_bytes(std::vector<std::uint8_t> bytes) {
  for (auto& b : bytes) b = static_cast<std::uint8_t>(~b);
  return bytes;
}

std::string pattern_of(std::size_t n) { return pattern(n); }

int throw_out_of_range(int x) { throw std::out_of_range("index " + std::to_string(x)); }

struct unregistered_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
int throw_unregistered(int) { throw unregistered_error("custom failure"); }

int fail_at_five(int x) {
  if (x == 5) throw std::out_of_range("element 5");
  return x;
}

/// A task that takes a while: only so that work is still under way when the test acts.
int slow_square(int x) {
  std::this_thread::sleep_for(20ms);
  return x * x;
}

/// Busy for about 100 µs, so that workers are mostly inside a task when they are killed.
long long busy_double(int x) {
  timespec start{}, now{};
  ::clock_gettime(CLOCK_MONOTONIC, &start);
  do {
    ::clock_gettime(CLOCK_MONOTONIC, &now);
  } while ((now.tv_sec - start.tv_sec) * 1'000'000'000L + (now.tv_nsec - start.tv_nsec) < 100'000);
  return 2LL * x;
}

/// Writes this worker's pid as one line to `fd` (a single write: atomic on a pipe).
void report_pid(int fd) {
  const std::string line = std::to_string(::getpid()) + "\n";
  [[maybe_unused]] const auto n = ::write(fd, line.data(), line.size());
}

/// Blocks until the test lets one task through (one byte on `fd`).
void wait_for_byte(int fd) {
  char c;
  while (::read(fd, &c, 1) < 0 && errno == EINTR) {
  }
}

/// Reports that it runs, waits for the test, returns `value`.
int gated(int started_fd, int gate_fd, int value) {
  report_pid(started_fd);
  wait_for_byte(gate_fd);
  return value;
}

/// Before crashing on purpose: no core file (slow to write, and litter).
void no_core_dump() {
  rlimit none{0, 0};
  ::setrlimit(RLIMIT_CORE, &none);
}

/// Ends its worker: dies of signal `how` at its default action (sanitizers catch SIGSEGV
/// otherwise), or exits with code `-how` for a negative one or zero.
int end_worker(int how) {
  no_core_dump();
  if (how <= 0) ::_exit(-how);
  ::signal(how, SIG_DFL);
  ::raise(how);
  ::_exit(99);
}

/// Reports that it runs, waits for the test, then kills its worker.
int gated_death(int started_fd, int gate_fd) {
  report_pid(started_fd);
  wait_for_byte(gate_fd);
  return end_worker(SIGKILL);
}

/// Kills its worker the first time (when `flag` does not exist yet, creating it), then
/// returns 42.
int crash_once(std::string flag) {
  if (::access(flag.c_str(), F_OK) == 0) return 42;
  const int fd = ::open(flag.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  if (fd >= 0) ::close(fd);
  return end_worker(SIGKILL);
}

/// Appends one byte to `attempts`, then kills its worker: every time.
int always_crash(std::string attempts) {
  const int fd = ::open(attempts.c_str(), O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0600);
  if (fd >= 0) {
    [[maybe_unused]] const auto n = ::write(fd, "x", 1);
    ::close(fd);
  }
  return end_worker(SIGKILL);
}

/// Maps `mib` MiB of memory made resident at once (MAP_POPULATE: no instrumented writes) and
/// never unmapped: the worker's resident memory grows for good. Lasts over a millisecond, the
/// most often a worker checks its memory.
int hog(int mib) {
  const std::size_t size = std::size_t(mib) << 20;
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  std::this_thread::sleep_for(2ms);
  return ::getpid();
}

/// Sleeps `ms` and gives its worker's pid (work that ages its worker).
int aging_pid(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ::getpid();
}

/// An encodable function object: its state crosses to the worker with the task.
struct scaled_sum {
  int factor = 1;
  std::string label;
  std::string operator()(int a, int b) const { return label + std::to_string(factor * (a + b)); }
};

/// Squares; element 0 first reports and waits for the test.
struct gate_first {
  int started_fd = -1;
  int gate_fd = -1;
  int operator()(int x) const {
    if (x == 0) {
      report_pid(started_fd);
      wait_for_byte(gate_fd);
    }
    return x * x;
  }
};

/// Squares, every element reporting and waiting for the test.
struct gated_square {
  int started_fd = -1;
  int gate_fd = -1;
  int operator()(int x) const { return gated(started_fd, gate_fd, x * x); }
};

// --- test utilities ------------------------------------------------------------------------

/// A pipe on which tasks report that they started (a pid per line) and one on which they wait
/// (a byte per task let through). Both are made before the pool, so forked workers inherit them.
/// The destructor lets many tasks through, so that no worker stays blocked after a failure.
class gate {
 public:
  /// For a pool with its own event loop: `wait_started()` blocks.
  gate() = default;
  /// For a pool on `ex`: `co_await started()`.
  explicit gate(const coproc::executor_type& ex) { reports_.emplace(started_.reader(ex)); }
  gate(const gate&) = delete;
  gate& operator=(const gate&) = delete;
  ~gate() { open(256); }

  int started_fd() const { return started_.write_end(); }
  int gate_fd() const { return gate_.read_end(); }

  /// Lets `n` tasks through.
  void open(std::size_t n = 1) {
    const std::string bytes(n, 'x');
    [[maybe_unused]] const auto w = ::write(gate_.write_end(), bytes.data(), bytes.size());
  }

  /// The pid of the next task that reports, or -1 at end-of-file.
  asio::awaitable<int> started() {
    auto line = co_await reports_->async_read_line();
    co_return line && !line->empty() ? std::stoi(*line) : -1;
  }

  /// Blocking form; -1 when nothing arrives within a minute (a hang guard, not a bound).
  int wait_started() {
    std::string line;
    for (;;) {
      pollfd p{started_.read_end(), POLLIN, 0};
      const int r = ::poll(&p, 1, 60'000);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return -1;
      char c;
      const ssize_t n = ::read(started_.read_end(), &c, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return -1;
      if (c == '\n') return line.empty() ? -1 : std::stoi(line);
      line.push_back(c);
    }
  }

 private:
  raw_pipe started_;
  raw_pipe gate_;
  std::optional<coproc::pipe_reader> reports_;
};

/// The exception `e` holds, as an E, if it is one.
template <typename E>
std::optional<E> caught_as(const std::exception_ptr& e) {
  if (!e) return std::nullopt;
  try {
    std::rethrow_exception(e);
  } catch (const E& x) {
    return x;
  } catch (...) {
  }
  return std::nullopt;
}

/// The code of the boost::system::system_error that `e` holds (empty otherwise).
error_code code_of(const std::exception_ptr& e) {
  auto s = caught_as<boost::system::system_error>(e);
  return s ? s->code() : error_code{};
}

std::string what_of(const std::exception_ptr& e) {
  if (!e) return "(no exception)";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
  }
  return "(not a std::exception)";
}

bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

template <typename T>
bool contains(const std::vector<T>& v, const T& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

/// Waits for `f` and gives its exception (null when it has a value).
template <typename T>
asio::awaitable<std::exception_ptr> failure_of(coproc::future<T> f) {
  std::exception_ptr e;
  try {
    co_await f.async_get();
  } catch (...) {
    e = std::current_exception();
  }
  co_return e;
}

int pidfd_open(int pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

/// Sends `sig` to `pid` when it is a child of this process, through a pidfd: a recycled pid
/// is never hit. True when the signal was sent.
bool signal_child(int pid, int sig) {
  const int fd = pidfd_open(pid);
  if (fd < 0) return false;
  bool ours = false;
  {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string stat;
    if (std::getline(f, stat)) {
      // pid (comm) state ppid ...; comm may hold spaces and parentheses.
      const auto close = stat.rfind(')');
      if (close != std::string::npos) {
        std::istringstream rest(stat.substr(close + 1));
        std::string state;
        int ppid = 0;
        rest >> state >> ppid;
        ours = ppid == ::getpid();
      }
    }
  }
  const bool sent = ours && ::syscall(SYS_pidfd_send_signal, fd, sig, nullptr, 0) == 0;
  ::close(fd);
  return sent;
}

std::size_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

/// Checks the counters of a pool that has finished: nothing queued or running, every task
/// accounted for once.
void expect_settled(const coproc::pool_stats& s) {
  EXPECT_EQ(s.queued, 0u);
  EXPECT_EQ(s.running, 0u);
  EXPECT_EQ(s.workers, 0u);
  EXPECT_EQ(s.submitted, s.done + s.failed + s.cancelled)
      << "submitted " << s.submitted << ", done " << s.done << ", failed " << s.failed
      << ", cancelled " << s.cancelled;
}

class process_pool_test : public io_test {
 protected:
  /// terminate_workers (SIGTERM) or kill_workers (SIGKILL): running tasks fail with
  /// worker_died, tasks sent ahead fail with errc::shut_down, queued ones are cancelled.
  void check_signalled_workers(bool kill) {
    const int sig = kill ? SIGKILL : SIGTERM;
    gate g(ex());
    process_pool pool(ex(), {.workers = 2, .prefetch = 1});
    std::vector<std::exception_ptr> running_errors, ahead_errors;
    run([&]() -> asio::awaitable<void> {
      std::vector<coproc::future<int>> running, ahead, queued;
      for (int i = 0; i < 2; ++i)
        running.push_back(pool.submit(gated, g.started_fd(), g.gate_fd(), i));
      for (int i = 0; i < 2; ++i) ahead.push_back(pool.submit(square, i));
      for (int i = 0; i < 3; ++i) queued.push_back(pool.submit(square, i));
      co_await g.started();
      co_await g.started();  // one on each worker, each with one task sent ahead
      if (kill)
        pool.kill_workers();
      else
        pool.terminate_workers();
      for (auto& f : queued) EXPECT_TRUE(f.cancelled());
      EXPECT_THROW(pool.submit(square, 1), std::logic_error);
      for (auto& f : running) {
        auto e = co_await failure_of(f);
        running_errors.push_back(e);
      }
      for (auto& f : ahead) {
        auto e = co_await failure_of(f);
        ahead_errors.push_back(e);
      }
      co_await pool.async_shutdown();
    }());
    for (auto& e : running_errors) {
      auto died = caught_as<coproc::worker_died>(e);
      EXPECT_TRUE(died) << what_of(e);
      if (died) {
        EXPECT_EQ(died->status().signal(), sig) << died->what();
      }
    }
    for (auto& e : ahead_errors) EXPECT_EQ(code_of(e), coproc::errc::shut_down) << what_of(e);
    const auto s = pool.stats();
    EXPECT_EQ(s.worker_restarts, 0u);
    EXPECT_EQ(s.cancelled, 3u);
    EXPECT_EQ(s.failed, 4u);
    expect_settled(s);
  }
};
using map_test = process_pool_test;
using spawn_pool_test = process_pool_test;
using shutdown_test = process_pool_test;
using recycling_test = process_pool_test;
using fault_test = process_pool_test;

// --- submit ----------------------------------------------------------------------------------

TEST_F(process_pool_test, a_function_pointer_runs_in_a_worker) {
  process_pool pool(ex(), {.workers = 2});
  EXPECT_EQ(pool.size(), 2u);
  const auto pids = pool.worker_pids();
  EXPECT_EQ(pids.size(), 2u);
  EXPECT_FALSE(contains(pids, static_cast<int>(::getpid())));
  run([&]() -> asio::awaitable<void> {
    const int sq = co_await pool.submit(square, 7);
    EXPECT_EQ(sq, 49);
    const int pid = co_await pool.submit(worker_pid);
    EXPECT_TRUE(contains(pids, pid)) << pid;
    co_await pool.async_shutdown();
  }());
  const auto s = pool.stats();
  EXPECT_EQ(s.submitted, 2u);
  EXPECT_EQ(s.done, 2u);
  expect_settled(s);
  for (int pid : pids) EXPECT_TRUE(reaped(pid)) << pid;
}

TEST_F(process_pool_test, a_captureless_lambda_runs_in_a_worker) {
  process_pool pool(ex(), {.workers = 1});
  run([&]() -> asio::awaitable<void> {
    const int product = co_await pool.submit([](int a, int b) { return a * b; }, 6, 7);
    EXPECT_EQ(product, 42);
    const int ppid = co_await pool.submit([] { return static_cast<int>(::getppid()); });
    EXPECT_EQ(ppid, ::getpid()) << "the worker is a child of this process";
    co_await pool.async_shutdown();
  }());
}

TEST_F(process_pool_test, an_encodable_function_object_takes_its_state_along) {
  process_pool pool(ex(), {.workers = 2});
  run([&]() -> asio::awaitable<void> {
    const scaled_sum times_ten{10, "sum: "};
    auto f = pool.submit(times_ten, 2, 3);
    const std::string a = co_await f.async_get();
    EXPECT_EQ(a, "sum: 50");
    const scaled_sum negated{-1, "neg "};
    auto g = pool.submit(negated, 4, 5);
    const std::string b = co_await g.async_get();
    EXPECT_EQ(b, "neg -9");
    co_await pool.async_shutdown();
  }());
}

TEST_F(process_pool_test, a_void_function_gives_a_void_future) {
  temp_dir dir;
  const std::string path = (dir / "marker").string();
  process_pool pool(ex(), {.workers = 1});
  run([&]() -> asio::awaitable<void> {
    std::string text = "written by a worker";
    coproc::future<void> f = pool.submit(write_text, path, text);
    co_await f.async_get();
    EXPECT_TRUE(f.done());
    EXPECT_FALSE(f.exception());
    co_await pool.async_shutdown();
  }());
  EXPECT_EQ(read_file(path), "written by a worker");
}

TEST_F(process_pool_test, containers_of_strings_cross_both_ways) {
  process_pool pool(ex(), {.workers = 1});
  run([&]() -> asio::awaitable<void> {
    std::vector<std::string> words{"alpha", "", "gamma with spaces", std::string(1000, 'z')};
    auto f = pool.submit(reversed_words, std::move(words));
    const std::vector<std::string> r = co_await f.async_get();
    const std::vector<std::string> expected{std::string(1000, 'z'), "gamma with spaces", "",
                                            "alpha"};
    EXPECT_EQ(r, expected);
    co_await pool.async_shutdown();
  }());
}

TEST_F(process_pool_test, an_8_mib_argument_and_an_8_mib_result) {
  constexpr std::size_t size = std::size_t(8) << 20;
  process_pool pool(ex(), {.workers = 2});
  run([&]() -> asio::awaitable<void> {
    std::vector<std::uint8_t> bytes(size);
    for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<std::uint8_t>(i * 7 + i / 4096);
    auto inverted = pool.submit(inverted_bytes, bytes);
    auto text = pool.submit(pattern_of, size);
    const std::vector<std::uint8_t> r = co_await inverted.async_get();
    const std::string s = co_await text.async_get();
    EXPECT_EQ(r.size(), size);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < std::min(size, r.size()); ++i)
      if (r[i] != static_cast<std::uint8_t>(~bytes[i])) ++wrong;
    EXPECT_EQ(wrong, 0u);
    EXPECT_EQ(s.size(), size);
    EXPECT_EQ(pattern_mismatch(s), std::string::npos);
    co_await pool.async_shutdown();
  }());
}

TEST_F(process_pool_test, exceptions_arrive_as_their_types) {
  process_pool pool(ex(), {.workers = 2});
  std::exception_ptr oor, custom, unknown;
  run([&]() -> asio::awaitable<void> {
    auto f1 = pool.submit(throw_out_of_range, 7);
    auto f2 = pool.submit(throw_unregistered, 1);
    auto f3 = pool.submit([]() -> int { throw 42; });
    oor = co_await failure_of(f1);
    custom = co_await failure_of(f2);
    unknown = co_await failure_of(f3);
    const int still_works = co_await pool.submit(square, 5);
    EXPECT_EQ(still_works, 25) << "a task's exception does not harm its worker";
    co_await pool.async_shutdown();
  }());
  auto o = caught_as<std::out_of_range>(oor);
  ASSERT_TRUE(o) << what_of(oor);
  EXPECT_STREQ(o->what(), "index 7");
  auto c = caught_as<coproc::remote_error>(custom);
  ASSERT_TRUE(c) << what_of(custom);
  EXPECT_TRUE(contains(c->type_name(), "unregistered_error")) << c->type_name();
  EXPECT_STREQ(c->what(), "custom failure");
  auto u = caught_as<coproc::remote_error>(unknown);
  ASSERT_TRUE(u) << what_of(unknown);
  EXPECT_EQ(u->type_name(), "unknown exception");
  const auto s = pool.stats();
  EXPECT_EQ(s.failed, 3u);
  EXPECT_EQ(s.done, 1u);
}

TEST_F(process_pool_test, messages_over_max_message_size_are_errors) {
  process_pool pool(ex(), {.workers = 1, .max_message_size = 1000});
  try {
    pool.submit(reversed_words, std::vector<std::string>{std::string(5000, 'a')});
    ADD_FAILURE() << "a task over the limit was accepted";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), coproc::errc::message_too_large) << e.what();
  }
  std::exception_ptr big_result;
  run([&]() -> asio::awaitable<void> {
    auto big = pool.submit(pattern_of, std::size_t{5000});
    big_result = co_await failure_of(big);
    auto small = pool.submit(pattern_of, std::size_t{500});
    const std::string s = co_await small.async_get();
    EXPECT_EQ(s.size(), 500u);
    co_await pool.async_shutdown();
  }());
  EXPECT_EQ(code_of(big_result), coproc::errc::message_too_large) << what_of(big_result);
}

TEST_F(process_pool_test, the_blocking_api_of_a_pool_with_its_own_event_loop) {
  std::vector<int> pids;
  {
    process_pool p({.workers = 2});
    pids = p.worker_pids();
    EXPECT_EQ(pids.size(), 2u);
    EXPECT_EQ(p.submit(square, 3).get(), 9);
    EXPECT_EQ(p.submit([](int a, int b) { return a - b; }, 10, 4).get(60s), 6);
    auto f = p.submit(slow_square, 6);
    EXPECT_TRUE(f.wait_for(60s));
    EXPECT_EQ(f.get(), 36);
    EXPECT_THROW(p.submit(throw_out_of_range, 1).get(), std::out_of_range);
    std::vector<coproc::future<int>> many;
    for (int i = 0; i < 100; ++i) many.push_back(p.submit(square, i));
    for (int i = 0; i < 100; ++i) EXPECT_EQ(many[static_cast<std::size_t>(i)].get(), i * i);
  }  // the destructor is shutdown(wait = true): workers exit and are reaped
  for (int pid : pids) EXPECT_TRUE(reaped(pid)) << pid;
}

TEST_F(process_pool_test, a_pool_without_a_worker_count_has_one_per_cpu) {
  EXPECT_GE(coproc::available_cpus(), 1u);
  process_pool pool(ex());
  EXPECT_EQ(pool.size(), coproc::available_cpus());
  EXPECT_EQ(pool.worker_pids().size(), coproc::available_cpus());
  run(pool.async_shutdown());
}

TEST_F(process_pool_test, submissions_from_several_threads_to_a_context_run_by_four_threads) {
  process_pool pool(ex(), {.workers = 3});
  auto guard = asio::make_work_guard(ctx());
  std::vector<std::thread> runners;
  for (int i = 0; i < 4; ++i) runners.emplace_back([this] { ctx().run(); });
  std::atomic<int> wrong{0}, right{0};
  std::vector<std::thread> submitters;
  for (int t = 0; t < 4; ++t)
    submitters.emplace_back([&, t] {
      std::vector<coproc::future<int>> fs;
      for (int i = 0; i < 250; ++i) fs.push_back(pool.submit(square, t * 1000 + i));
      for (int i = 0; i < 250; ++i) {
        const int x = t * 1000 + i;
        if (fs[static_cast<std::size_t>(i)].get(120s) == x * x)
          ++right;
        else
          ++wrong;
      }
    });
  for (auto& s : submitters) s.join();
  pool.shutdown(true);  // blocks this thread; the context's threads finish the work
  guard.reset();
  for (auto& r : runners) r.join();
  EXPECT_EQ(right, 1000);
  EXPECT_EQ(wrong, 0);
  const auto s = pool.stats();
  EXPECT_EQ(s.submitted, 1000u);
  EXPECT_EQ(s.done, 1000u);
  expect_settled(s);
}

// --- the spawn start method ---------------------------------------------------------------

TEST_F(spawn_pool_test, registered_functions_run_through_submit_and_map) {
  process_pool pool(ex(), {.workers = 2, .method = start_method::spawn, .name = "spawned"});
  run([&]() -> asio::awaitable<void> {
    const int sq = co_await pool.submit(square, 9);
    EXPECT_EQ(sq, 81);
    const int sum = co_await pool.submit(add, 40, 2);
    EXPECT_EQ(sum, 42);
    const int pid = co_await pool.submit(worker_pid);
    EXPECT_NE(pid, ::getpid());
    EXPECT_TRUE(contains(pool.worker_pids(), pid));
    std::vector<int> inputs;
    for (int i = 0; i < 30; ++i) inputs.push_back(i);
    auto stream = pool.map(square, std::move(inputs), {.chunksize = 4});
    std::vector<int> got;
    for (;;) {
      auto r = co_await stream.async_next();
      if (!r) break;
      got.push_back(*r);
    }
    std::vector<int> expected;
    for (int i = 0; i < 30; ++i) expected.push_back(i * i);
    EXPECT_EQ(got, expected);
    std::vector<std::tuple<int, int>> pairs{{1, 2}, {30, 12}};
    auto sums = pool.starmap(add, std::move(pairs));
    auto first = co_await sums.async_next();
    auto second = co_await sums.async_next();
    auto end = co_await sums.async_next();
    EXPECT_EQ(first, 3);
    EXPECT_EQ(second, 42);
    EXPECT_FALSE(end);
    co_await pool.async_shutdown();
  }());
  expect_settled(pool.stats());
}

TEST_F(spawn_pool_test, an_unregistered_function_is_an_invalid_argument) {
  process_pool pool(ex(), {.workers = 1, .method = start_method::spawn});
  try {
    pool.submit(not_registered, 1);
    ADD_FAILURE() << "submitted";
  } catch (const std::invalid_argument& e) {
    EXPECT_TRUE(contains(e.what(), "COPROC_REGISTER")) << e.what();
  }
  EXPECT_THROW(pool.submit([](int x) { return x; }, 1), std::invalid_argument);
  EXPECT_THROW(pool.submit(scaled_sum{2, "x"}, 1, 2), std::invalid_argument);
  std::exception_ptr from_map;
  run([&]() -> asio::awaitable<void> {
    std::vector<int> inputs{1, 2, 3};
    auto stream = pool.map(not_registered, std::move(inputs));
    try {
      auto r = co_await stream.async_next();
      ADD_FAILURE() << "a result arrived: " << r.value_or(-1);
    } catch (...) {
      from_map = std::current_exception();
    }
    co_await pool.async_shutdown();
  }());
  EXPECT_TRUE(caught_as<std::invalid_argument>(from_map)) << what_of(from_map);
  EXPECT_EQ(pool.stats().submitted, 0u);
}

TEST_F(spawn_pool_test, a_registered_initializer_runs_in_each_worker) {
  process_pool pool(ex(), {.workers = 2,
                           .method = start_method::spawn,
                           .initializer = coproc::worker_initializer(set_initialized_value, 42)});
  run([&]() -> asio::awaitable<void> {
    std::vector<coproc::future<int>> fs;
    for (int i = 0; i < 8; ++i) fs.push_back(pool.submit(get_initialized_value));
    for (auto& f : fs) {
      const int v = co_await f.async_get();
      EXPECT_EQ(v, 42);
    }
    co_await pool.async_shutdown();
  }());
}

TEST_F(spawn_pool_test, an_unregistered_initializer_is_rejected_at_construction) {
  try {
    process_pool pool(ex(), {.workers = 1,
                             .method = start_method::spawn,
                             .initializer = coproc::worker_initializer([] {}),
                             .name = "uninitializable"});
    ADD_FAILURE() << "constructed";
  } catch (const std::invalid_argument& e) {
    EXPECT_TRUE(contains(e.what(), "uninitializable")) << e.what();
  }
  EXPECT_EQ(leftover_children(), "") << "no worker was started";
}

// --- map ---------------------------------------------------------------------------------------

TEST_F(map_test, ordered_results_come_in_input_order) {
  process_pool pool(ex(), {.workers = 2});
  run([&]() -> asio::awaitable<void> {
    std::vector<int> inputs;
    for (int i = 0; i < 200; ++i) inputs.push_back(i);
    for (std::size_t chunksize : {std::size_t{1}, std::size_t{7}, std::size_t{500}}) {
      auto stream = pool.map(square, inputs, {.chunksize = chunksize});
      std::vector<int> got;
      for (;;) {
        auto r = co_await stream.async_next();
        if (!r) break;
        got.push_back(*r);
      }
      EXPECT_EQ(got.size(), inputs.size()) << "chunksize " << chunksize;
      bool in_order = true;
      for (std::size_t i = 0; i < got.size(); ++i)
        if (got[i] != inputs[i] * inputs[i]) in_order = false;
      EXPECT_TRUE(in_order) << "chunksize " << chunksize;
    }
    co_await pool.async_shutdown();
  }());
}

TEST_F(map_test, an_ordered_stream_waits_for_its_first_element) {
  gate g(ex());
  process_pool pool(ex(), {.workers = 2, .prefetch = 1});
  run([&]() -> asio::awaitable<void> {
    // Element 0 blocks; with one task sent ahead per worker, at most one other element waits
    // behind it, so 8 of the other 9 complete while it blocks.
    auto eight_done = std::make_shared<coproc::promise<void>>(ex());
    auto eight_done_future = eight_done->get_future();
    coproc::map_options options{.buffersize = 10};
    options.progress = [eight_done](std::size_t done, std::optional<std::size_t>) {
      if (done >= 8) eight_done->set_value();
    };
    auto stream = pool.map(gate_first{g.started_fd(), g.gate_fd()},
                           std::views::iota(0, 10) | std::views::common, options);
    auto first = std::make_shared<coproc::promise<int>>(ex());
    auto first_future = first->get_future();
    stream.async_next([first](std::exception_ptr e, std::optional<int> r) {
      if (e)
        first->set_exception(e);
      else
        first->set_value(r.value_or(-1));
    });
    co_await eight_done_future.async_get();
    EXPECT_FALSE(first_future.done()) << "the first result came before element 0 finished";
    g.open();
    const int r0 = co_await first_future.async_get();
    EXPECT_EQ(r0, 0);
    std::vector<int> rest;
    for (;;) {
      auto r = co_await stream.async_next();
      if (!r) break;
      rest.push_back(*r);
    }
    EXPECT_EQ(rest, (std::vector<int>{1, 4, 9, 16, 25, 36, 49, 64, 81}));
    co_await pool.async_shutdown();
  }());
}

TEST_F(map_test, unordered_results_come_in_completion_order) {
  gate g(ex());
  process_pool pool(ex(), {.workers = 2, .prefetch = 1});
  run([&]() -> asio::awaitable<void> {
    auto stream = pool.map(gate_first{g.started_fd(), g.gate_fd()},
                           std::views::iota(0, 10) | std::views::common,
                           {.ordered = false, .buffersize = 10});
    // Element 0 blocks (and at most one element queued behind it on its worker): the others
    // arrive first.
    std::multiset<int> got;
    for (int i = 0; i < 8; ++i) {
      auto r = co_await stream.async_next();
      EXPECT_TRUE(r);
      if (r) got.insert(*r);
    }
    EXPECT_EQ(got.count(0), 0u) << "element 0 cannot have finished: it is still blocked";
    g.open();
    for (;;) {
      auto r = co_await stream.async_next();
      if (!r) break;
      got.insert(*r);
    }
    EXPECT_EQ(got, (std::multiset<int>{0, 1, 4, 9, 16, 25, 36, 49, 64, 81}));
    co_await pool.async_shutdown();
  }());
}

TEST_F(map_test, a_chunk_runs_as_one_task_on_one_worker) {
  process_pool pool(ex(), {.workers = 2});
  run([&]() -> asio::awaitable<void> {
    auto stream = pool.map(pid_for, std::views::iota(0, 70) | std::views::common,
                           {.chunksize = 7, .ordered = false});
    std::vector<int> pids;
    for (;;) {
      auto r = co_await stream.async_next();
      if (!r) break;
      pids.push_back(*r);
    }
    EXPECT_EQ(pids.size(), 70u);
    // Results of one chunk arrive together, from one worker.
    for (std::size_t c = 0; c + 7 <= pids.size(); c += 7)
      for (std::size_t i = c; i < c + 7; ++i) EXPECT_EQ(pids[i], pids[c]) << "chunk at " << c;
    co_await pool.async_shutdown();
  }());
  EXPECT_EQ(pool.stats().submitted, 10u) << "70 inputs in chunks of 7";
}

TEST_F(map_test, co_await_takes_buffered_results_without_a_trip_through_the_loop) {
  process_pool pool(ex(), {.workers = 1});
  run([&]() -> asio::awaitable<void> {
    auto stream = pool.map(square, std::vector<int>{1, 2, 3, 4, 5}, {.chunksize = 5});
    auto first = co_await stream.async_next();  // waits for the chunk
    EXPECT_EQ(first, 1);
    bool loop_ran = false;
    asio::post(ex(), [&] { loop_ran = true; });
    std::vector<int> rest;
    for (;;) {
      auto r = co_await stream.async_next();
      if (!r) break;
      rest.push_back(*r);
    }
    EXPECT_EQ(rest, (std::vector<int>{4, 9, 16, 25}));
    EXPECT_FALSE(loop_ran) << "the rest of the chunk was buffered: no handler ran in between";
    // Another token still completes through the executor, never inside the call.
    auto again = pool.map(square, std::vector<int>{6, 7}, {.chunksize = 2});
    co_await again.async_next();
    bool completed = false;
    again.async_next([&](std::exception_ptr, std::optional<int> r) {
      EXPECT_EQ(r, 49);
      completed = true;
    });
    EXPECT_FALSE(completed);
    co_await asio::post(ex(), asio::use_awaitable);
    EXPECT_TRUE(completed);
    co_await pool.async_shutdown();
  }());
}

TEST_F(map_test, a_cancelled_wait_loses_no_result) {
  using namespace asio::experimental::awaitable_operators;
  gate g(ex());
  process_pool pool(ex(), {.workers = 1});
  run([&]() -> asio::awaitable<void> {
    auto stream = pool.map(gate_first{g.started_fd(), g.gate_fd()}, std::vector<int>{0, 1, 2},
                           {.chunksize = 1});
    co_await g.started();  // element 0 runs, and blocks until the gate opens
    // The waits cannot complete, so the timers win and the waits are cancelled.
    asio::steady_timer timer(ex(), std::chrono::milliseconds(1));
    auto raced = co_await (stream.async_next() || timer.async_wait(asio::use_awaitable));
    EXPECT_EQ(raced.index(), 1u);
    timer.expires_after(std::chrono::milliseconds(1));
    auto raced_batch =
        co_await (stream.async_next_batch() || timer.async_wait(asio::use_awaitable));
    EXPECT_EQ(raced_batch.index(), 1u);
    // Cancelled through a slot, with a callback.
    auto outcome = std::make_shared<coproc::promise<std::exception_ptr>>(ex());
    auto outcome_future = outcome->get_future();
    asio::cancellation_signal cancel;
    stream.async_next(asio::bind_cancellation_slot(
        cancel.slot(), [outcome](std::exception_ptr e, std::optional<int> r) {
          EXPECT_FALSE(r);
          outcome->set_value(e);
        }));
    cancel.emit(asio::cancellation_type::terminal);
    const std::exception_ptr e = co_await outcome_future.async_get();
    EXPECT_EQ(code_of(e), asio::error::operation_aborted) << what_of(e);
    g.open(3);
    std::vector<int> got;
    for (;;) {
      auto r = co_await stream.async_next();
      if (!r) break;
      got.push_back(*r);
    }
    EXPECT_EQ(got, (std::vector<int>{0, 1, 4})) << "the cancelled waits lost nothing";
    co_await pool.async_shutdown();
  }());
}

TEST_F(map_test, an_unbounded_input_is_consumed_lazily) {
  process_pool pool(ex(), {.workers = 2});
  std::atomic<long> pulled{0};
  long pulled_when_destroyed = 0;
  run([&]() -> asio::awaitable<void> {
    auto counted = std::views::iota(0) | std::views::transform([&pulled](int x) {
                     ++pulled;
                     return x;
                   });
    {
      auto stream = pool.map(square, counted);
      for (int i = 0; i < 1000; ++i) {
        auto r = co_await stream.async_next();
        EXPECT_EQ(r, i * i);
        if (r != i * i) break;
      }
      pulled_when_destroyed = pulled;
    }
    // Chunks submitted ahead still run; nothing more is pulled.
    co_await pool.async_shutdown();
  }());
  // buffersize 0 means twice the workers: at most 4 chunks of 1 ahead of the consumer.
  EXPECT_GE(pulled_when_destroyed, 1000);
  EXPECT_LE(pulled_when_destroyed, 1000 + 4 + 1);
  EXPECT_EQ(pulled, pulled_when_destroyed) << "input pulled after the stream was destroyed";
  EXPECT_EQ(static_cast<long>(pool.stats().submitted), pulled_when_destroyed);
}

TEST_F(map_test, buffersize_bounds_the_input_pulled_ahead) {
  process_pool pool(ex(), {.workers = 2});
  constexpr std::size_t chunksize = 5, buffersize = 3;
  std::atomic<std::size_t> pulled{0};
  run([&]() -> asio::awaitable<void> {
    auto counted =
        std::views::iota(0, 200) | std::views::common | std::views::transform([&pulled](int x) {
          ++pulled;
          return x;
        });
    auto stream = pool.map(square, counted, {.chunksize = chunksize, .buffersize = buffersize});
    std::size_t received = 0;
    std::size_t max_ahead = 0;
    for (;;) {
      auto r = co_await stream.async_next();
      if (!r) break;
      EXPECT_EQ(*r, static_cast<int>(received * received));
      ++received;
      // The chunks taken so far, plus `buffersize` outstanding ones.
      const std::size_t taken = (received - 1) / chunksize + 1;
      const std::size_t bound = (taken + buffersize) * chunksize;
      EXPECT_LE(pulled, bound) << "after " << received << " results";
      max_ahead = std::max(max_ahead, pulled - received);
    }
    EXPECT_EQ(received, 200u);
    EXPECT_GT(max_ahead, chunksize) << "the stream works ahead of its consumer";
    co_await pool.async_shutdown();
  }());
}

TEST_F(map_test, a_timeout_fails_the_wait_with_timed_out) {
  gate g(ex());
  process_pool pool(ex(), {.workers = 1});
  std::exception_ptr first_error, second_error;
  run([&]() -> asio::awaitable<void> {
    std::vector<int> inputs{1, 2};
    auto stream = pool.map(gated_square{g.started_fd(), g.gate_fd()}, std::move(inputs),
                           {.timeout = std::chrono::milliseconds(200)});
    try {
      auto r = co_await stream.async_next();
      ADD_FAILURE() << "a result arrived from a blocked task: " << r.value_or(-1);
    } catch (...) {
      first_error = std::current_exception();
    }
    try {
      auto r = co_await stream.async_next();
      ADD_FAILURE() << "a result arrived past the deadline: " << r.value_or(-1);
    } catch (...) {
      second_error = std::current_exception();
    }
    g.open(2);  // the work already submitted goes on and finishes
    co_await pool.async_shutdown();
  }());
  EXPECT_EQ(code_of(first_error), coproc::errc::timed_out) << what_of(first_error);
  EXPECT_EQ(code_of(second_error), coproc::errc::timed_out) << what_of(second_error);
  EXPECT_EQ(pool.stats().done, 2u);
}

TEST_F(map_test, a_timeout_in_blocking_iteration) {
  gate g;
  process_pool pool({.workers = 1});
  auto stream = pool.map(gated_square{g.started_fd(), g.gate_fd()}, std::vector<int>{3},
                         {.timeout = std::chrono::milliseconds(100)});
  try {
    auto r = stream.next();
    ADD_FAILURE() << "a result arrived from a blocked task: " << r.value_or(-1);
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), coproc::errc::timed_out) << e.what();
  }
  g.open();
}

TEST_F(map_test, progress_reports_inputs_done_and_the_total) {
  process_pool pool(ex(), {.workers = 2});
  using report = std::pair<std::size_t, std::optional<std::size_t>>;
  std::vector<report> sized, unsized;
  run([&]() -> asio::awaitable<void> {
    // A sized input: the total is known from the first report.
    coproc::map_options chunked{.chunksize = 3, .buffersize = 10};
    chunked.progress = [&](std::size_t done, std::optional<std::size_t> total) {
      sized.emplace_back(done, total);
    };
    auto first = pool.map(square, std::views::iota(0, 10), chunked);
    while (co_await first.async_next()) {
    }
    // An input of unknown size, one chunk at a time: the total is learnt when the last input
    // is pulled.
    coproc::map_options one_by_one{.buffersize = 1};
    one_by_one.progress = [&](std::size_t done, std::optional<std::size_t> total) {
      unsized.emplace_back(done, total);
    };
    auto below_three = std::views::iota(0) | std::views::take_while([](int x) { return x < 3; });
    auto second = pool.map(square, below_three, one_by_one);
    while (co_await second.async_next()) {
    }
    co_await pool.async_shutdown();
  }());
  // Chunks of 3, 3, 3, 1 complete in some order: the counts grow by those steps.
  ASSERT_EQ(sized.size(), 4u);
  std::multiset<std::size_t> steps;
  std::size_t last = 0;
  for (auto [done, total] : sized) {
    EXPECT_EQ(total, 10u);
    EXPECT_GT(done, last);
    steps.insert(done - last);
    last = done;
  }
  EXPECT_EQ(last, 10u);
  EXPECT_EQ(steps, (std::multiset<std::size_t>{1, 3, 3, 3}));
  EXPECT_EQ(unsized, (std::vector<report>{{1, std::nullopt}, {2, std::nullopt}, {3, 3}}));
}

TEST_F(map_test, an_exception_ends_the_stream_at_its_position) {
  process_pool pool(ex(), {.workers = 2});
  std::vector<int> before;
  std::exception_ptr error, after;
  std::optional<int> value_after;
  run([&]() -> asio::awaitable<void> {
    auto stream = pool.map(fail_at_five, std::views::iota(0, 10) | std::views::common);
    try {
      for (;;) {
        auto r = co_await stream.async_next();
        if (!r) break;
        before.push_back(*r);
      }
    } catch (...) {
      error = std::current_exception();
    }
    try {
      value_after = co_await stream.async_next();
    } catch (...) {
      after = std::current_exception();
    }
    co_await pool.async_shutdown();
  }());
  EXPECT_EQ(before, (std::vector<int>{0, 1, 2, 3, 4}));
  auto e = caught_as<std::out_of_range>(error);
  ASSERT_TRUE(e) << what_of(error);
  EXPECT_STREQ(e->what(), "element 5");
  EXPECT_FALSE(value_after) << "a value after the stream ended: " << *value_after;
}

TEST_F(map_test, starmap_spreads_tuples_over_the_arguments) {
  process_pool pool(ex(), {.workers = 2});
  run([&]() -> asio::awaitable<void> {
    std::vector<std::tuple<int, int>> pairs;
    for (int i = 0; i < 50; ++i) pairs.emplace_back(i, 100 * i);
    auto sums = pool.starmap(add, pairs, {.chunksize = 4});
    std::vector<int> got;
    for (;;) {
      auto r = co_await sums.async_next();
      if (!r) break;
      got.push_back(*r);
    }
    std::vector<int> expected;
    for (int i = 0; i < 50; ++i) expected.push_back(101 * i);
    EXPECT_EQ(got, expected);
    std::vector<std::tuple<int, int>> more{{1, 2}, {3, 4}};
    auto labelled = pool.starmap(scaled_sum{3, "="}, std::move(more));
    auto a = co_await labelled.async_next();
    auto b = co_await labelled.async_next();
    EXPECT_EQ(a, "=9");
    EXPECT_EQ(b, "=21");
    co_await pool.async_shutdown();
  }());
}

TEST_F(map_test, blocking_iteration_with_range_for) {
  process_pool pool({.workers = 2});
  std::vector<int> got;
  for (int r : pool.map(square, std::views::iota(0, 300) | std::views::common, {.chunksize = 8}))
    got.push_back(r);
  ASSERT_EQ(got.size(), 300u);
  for (int i = 0; i < 300; ++i) EXPECT_EQ(got[static_cast<std::size_t>(i)], i * i);
  std::vector<int> unordered;
  auto stream = pool.map(square, std::vector<int>{1, 2, 3, 4}, {.ordered = false});
  for (int r : stream) unordered.push_back(r);
  std::sort(unordered.begin(), unordered.end());
  EXPECT_EQ(unordered, (std::vector<int>{1, 4, 9, 16}));
  EXPECT_FALSE(stream.next()) << "the end, again";
}

// --- cancellation and shutdown (CPython's test_concurrent_futures) ------------------------

TEST_F(shutdown_test, cancel_works_on_queued_tasks_only) {
  gate g(ex());
  process_pool pool(ex(), {.workers = 1, .prefetch = 1});
  run([&]() -> asio::awaitable<void> {
    auto running = pool.submit(gated, g.started_fd(), g.gate_fd(), 1);
    auto sent_ahead = pool.submit(square, 2);
    auto queued = pool.submit(square, 3);
    auto queued_too = pool.submit(square, 4);
    const int pid = co_await g.started();
    EXPECT_GT(pid, 0);
    EXPECT_TRUE(running.running());
    EXPECT_FALSE(running.cancel()) << "a running task cannot be cancelled";
    EXPECT_FALSE(sent_ahead.cancel()) << "a task sent ahead to its worker cannot be cancelled";
    EXPECT_FALSE(queued.running());
    EXPECT_TRUE(queued.cancel());
    EXPECT_TRUE(queued.cancelled());
    EXPECT_TRUE(queued.done());
    EXPECT_TRUE(queued_too.cancel());
    EXPECT_TRUE(queued_too.cancel()) << "cancelling again still says cancelled";
    auto e = co_await failure_of(queued);
    EXPECT_EQ(code_of(e), asio::error::operation_aborted) << what_of(e);
    g.open();
    const int r1 = co_await running.async_get();
    const int r2 = co_await sent_ahead.async_get();
    EXPECT_EQ(r1, 1);
    EXPECT_EQ(r2, 4);
    EXPECT_FALSE(running.cancel()) << "a finished task cannot be cancelled";
    co_await pool.async_shutdown();
  }());
  const auto s = pool.stats();
  EXPECT_EQ(s.done, 2u);
  EXPECT_EQ(s.cancelled, 2u);
  expect_settled(s);
}

TEST_F(shutdown_test, without_prefetch_a_task_stays_cancellable_until_a_worker_is_free) {
  gate g(ex());
  process_pool pool(ex(), {.workers = 1, .prefetch = 0});
  run([&]() -> asio::awaitable<void> {
    auto running = pool.submit(gated, g.started_fd(), g.gate_fd(), 1);
    auto waiting = pool.submit(square, 2);
    auto next = pool.submit(square, 3);
    co_await g.started();
    EXPECT_FALSE(waiting.running()) << "nothing is sent ahead";
    EXPECT_EQ(pool.stats().queued, 2u);
    EXPECT_TRUE(waiting.cancel());
    g.open();
    const int r1 = co_await running.async_get();
    const int r3 = co_await next.async_get();
    EXPECT_EQ(r1, 1);
    EXPECT_EQ(r3, 9);
    co_await pool.async_shutdown();
  }());
  const auto s = pool.stats();
  EXPECT_EQ(s.cancelled, 1u);
  EXPECT_EQ(s.done, 2u);
  expect_settled(s);
}

TEST_F(shutdown_test, shutdown_with_wait_waits_for_every_task) {
  process_pool pool({.workers = 2});
  const auto pids = pool.worker_pids();
  std::vector<coproc::future<int>> fs;
  for (int i = 0; i < 8; ++i) fs.push_back(pool.submit(slow_square, i));
  pool.shutdown(true);
  for (int i = 0; i < 8; ++i) {
    auto& f = fs[static_cast<std::size_t>(i)];
    EXPECT_TRUE(f.done()) << i;
    if (f.done()) {
      EXPECT_EQ(f.get(), i * i);
    }
  }
  EXPECT_TRUE(pool.worker_pids().empty());
  for (int pid : pids) EXPECT_TRUE(reaped(pid)) << "worker " << pid << " not reaped";
  const auto s = pool.stats();
  EXPECT_EQ(s.done, 8u);
  expect_settled(s);
  EXPECT_THROW(pool.submit(square, 1), std::logic_error);
  pool.shutdown(true);  // again: nothing to do
}

TEST_F(shutdown_test, shutdown_without_wait_returns_at_once_and_futures_still_resolve) {
  gate g;
  process_pool pool({.workers = 2});
  auto a = pool.submit(gated, g.started_fd(), g.gate_fd(), 1);
  auto b = pool.submit(gated, g.started_fd(), g.gate_fd(), 2);
  auto c = pool.submit(square, 5);
  EXPECT_GT(g.wait_started(), 0);
  EXPECT_GT(g.wait_started(), 0);
  // If shutdown(false) waited, it could only return once the gate opened: the guard opens it
  // after a minute, and the test fails instead of hanging.
  std::promise<void> returned;
  std::atomic<bool> guard_opened{false};
  std::thread guard([&, r = returned.get_future()] {
    if (r.wait_for(60s) != std::future_status::ready) {
      guard_opened = true;
      g.open(2);
    }
  });
  pool.shutdown(false);
  returned.set_value();
  guard.join();
  EXPECT_FALSE(guard_opened) << "shutdown(false) waited for the running tasks";
  EXPECT_FALSE(a.done());
  EXPECT_FALSE(b.done());
  EXPECT_THROW(pool.submit(square, 1), std::logic_error);
  g.open(2);
  EXPECT_EQ(a.get(), 1);
  EXPECT_EQ(b.get(), 2);
  EXPECT_EQ(c.get(), 25);
}

TEST_F(shutdown_test, shutdown_cancelling_futures_cancels_queued_tasks) {
  gate g(ex());
  process_pool pool(ex(), {.workers = 1, .prefetch = 1});
  run([&]() -> asio::awaitable<void> {
    auto running = pool.submit(gated, g.started_fd(), g.gate_fd(), 7);
    auto sent_ahead = pool.submit(square, 3);
    std::vector<coproc::future<int>> queued;
    for (int i = 0; i < 5; ++i) queued.push_back(pool.submit(square, i));
    co_await g.started();
    pool.shutdown(false, true);
    for (auto& f : queued) EXPECT_TRUE(f.cancelled());
    EXPECT_FALSE(running.done());
    EXPECT_FALSE(sent_ahead.cancelled());
    g.open();
    const int r = co_await running.async_get();
    const int s = co_await sent_ahead.async_get();
    EXPECT_EQ(r, 7);
    EXPECT_EQ(s, 9);
    co_await pool.async_shutdown();
  }());
  const auto s = pool.stats();
  EXPECT_EQ(s.cancelled, 5u);
  EXPECT_EQ(s.done, 2u);
  expect_settled(s);
}

TEST_F(shutdown_test, submit_after_shutdown_is_a_logic_error) {
  process_pool pool(ex(), {.workers = 1});
  pool.shutdown(false);
  EXPECT_THROW(pool.submit(square, 1), std::logic_error);
  try {
    auto stream = pool.map(square, std::vector<int>{1});
    ADD_FAILURE() << "map after shutdown returned a stream";
  } catch (const std::logic_error& e) {
    EXPECT_TRUE(contains(e.what(), "map after shutdown")) << e.what();
  }
  run(pool.async_shutdown());
  EXPECT_THROW(pool.submit(square, 1), std::logic_error);
}

TEST_F(shutdown_test, async_shutdown_completes_after_every_task_and_worker) {
  process_pool pool(ex(), {.workers = 2});
  const auto pids = pool.worker_pids();
  std::vector<coproc::future<int>> fs;
  for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(slow_square, i));
  bool completed = false;
  run([&]() -> asio::awaitable<void> {
    co_await pool.async_shutdown();
    completed = true;
    for (auto& f : fs) EXPECT_TRUE(f.done());
    EXPECT_TRUE(pool.worker_pids().empty());
    for (int pid : pids) EXPECT_TRUE(reaped(pid)) << pid;
    co_await pool.async_shutdown();  // again: completes at once
  }());
  EXPECT_TRUE(completed);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i * i);
  expect_settled(pool.stats());
}

TEST_F(shutdown_test, destroying_the_pool_object_lets_its_work_finish) {
  std::vector<coproc::future<int>> fs;
  std::vector<int> pids;
  {
    process_pool pool(ex(), {.workers = 2});
    pids = pool.worker_pids();
    for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(slow_square, i));
  }  // shutdown(false): the engine lives on in its handlers
  ASSERT_TRUE(run_until(
      [&] {
        return std::all_of(fs.begin(), fs.end(), [](auto& f) { return f.done(); }) &&
               std::all_of(pids.begin(), pids.end(), [](int pid) { return reaped(pid); });
      },
      60s));
  for (int i = 0; i < 20; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i * i);
}

TEST_F(shutdown_test, destroying_the_context_first_fails_open_futures_with_shut_down) {
  gate g;
  std::vector<coproc::future<int>> fs;
  std::vector<int> pids;
  {
    asio::io_context local;
    process_pool pool(local.get_executor(), {.workers = 1, .prefetch = 1});
    pids = pool.worker_pids();
    fs.push_back(pool.submit(gated, g.started_fd(), g.gate_fd(), 1));  // running
    fs.push_back(pool.submit(square, 2));                              // sent ahead
    fs.push_back(pool.submit(square, 3));                              // queued
    fs[2].add_done_callback([] {});  // posted to a context that is going away
    local.poll();
    EXPECT_GT(g.wait_started(), 0);
  }
  for (auto& f : fs) {
    EXPECT_TRUE(f.done());
    EXPECT_EQ(code_of(f.exception()), coproc::errc::shut_down) << what_of(f.exception());
  }
  for (int pid : pids) EXPECT_TRUE(reaped(pid)) << "worker " << pid << " left behind";
}

TEST_F(shutdown_test, a_done_callback_may_submit_more_work) {
  process_pool pool(ex(), {.workers = 2});
  auto result = std::make_shared<coproc::promise<int>>(ex());
  auto chained = result->get_future();
  auto first = pool.submit(square, 3);
  first.add_done_callback([&pool, result](const coproc::future<int>& f) {
    auto second = pool.submit(square, f.get() + 1);
    second.add_done_callback(
        [result](const coproc::future<int>& s) { result->set_value(s.get()); });
  });
  run([&]() -> asio::awaitable<void> {
    const int r = co_await chained.async_get();
    EXPECT_EQ(r, 100);
    co_await pool.async_shutdown();
  }());
  EXPECT_EQ(pool.stats().done, 2u);
}

TEST_F(shutdown_test, shutdown_from_a_done_callback_does_not_hang) {
  // On the pool's own event loop thread, where a blocking wait could never end.
  std::promise<void> called;
  auto called_future = called.get_future();
  process_pool pool({.workers = 2});
  auto first = pool.submit(square, 4);
  auto second = pool.submit(slow_square, 5);
  first.add_done_callback([&pool, &called] {
    pool.shutdown(true);
    called.set_value();
  });
  ASSERT_EQ(called_future.wait_for(60s), std::future_status::ready)
      << "shutdown(true) in a done callback hung";
  EXPECT_EQ(second.get(), 25) << "work submitted before the shutdown still completes";
  EXPECT_THROW(pool.submit(square, 1), std::logic_error);
}

TEST_F(shutdown_test, shutdown_from_a_done_callback_on_the_callers_context) {
  process_pool pool(ex(), {.workers = 1});
  bool called = false;
  auto first = pool.submit(square, 4);
  auto second = pool.submit(slow_square, 5);
  first.add_done_callback([&] {
    pool.shutdown(true, false);
    called = true;
  });
  run([&]() -> asio::awaitable<void> {
    const int r = co_await second.async_get();
    EXPECT_EQ(r, 25);
    co_await pool.async_shutdown();
  }());
  EXPECT_TRUE(called);
}

TEST_F(shutdown_test, an_initializer_that_throws_breaks_the_pool) {
  process_pool pool(ex(), {.workers = 2, .initializer = coproc::worker_initializer([] {
                                           throw std::runtime_error("no database connection");
                                         })});
  std::vector<std::exception_ptr> queued_errors;
  std::exception_ptr later_error;
  bool later_done_at_once = false;
  run([&]() -> asio::awaitable<void> {
    std::vector<coproc::future<int>> fs;
    for (int i = 0; i < 4; ++i) fs.push_back(pool.submit(square, i));
    for (auto& f : fs) {
      auto e = co_await failure_of(f);
      queued_errors.push_back(e);
    }
    auto later = pool.submit(square, 9);
    later_done_at_once = later.done();
    later_error = co_await failure_of(later);
    co_await pool.async_shutdown();
  }());
  for (auto& e : queued_errors) {
    EXPECT_EQ(code_of(e), coproc::errc::pool_broken) << what_of(e);
    EXPECT_TRUE(contains(what_of(e), "no database connection")) << what_of(e);
  }
  EXPECT_TRUE(later_done_at_once) << "a broken pool fails new tasks at once";
  EXPECT_EQ(code_of(later_error), coproc::errc::pool_broken) << what_of(later_error);
  EXPECT_TRUE(contains(what_of(later_error), "no database connection")) << what_of(later_error);
  const auto s = pool.stats();
  EXPECT_EQ(s.failed, 5u);
  EXPECT_EQ(s.worker_restarts, 0u) << "a broken pool starts no replacement";
  expect_settled(s);
}

TEST_F(shutdown_test, an_initializer_that_ends_its_worker_breaks_the_pool) {
  process_pool pool(ex(),
                    {.workers = 1, .initializer = coproc::worker_initializer(end_worker, -5)});
  std::exception_ptr e;
  run([&]() -> asio::awaitable<void> {
    auto f = pool.submit(square, 1);
    e = co_await failure_of(f);
    co_await pool.async_shutdown();
  }());
  EXPECT_EQ(code_of(e), coproc::errc::pool_broken) << what_of(e);
  EXPECT_TRUE(contains(what_of(e), "initializer")) << what_of(e);
  EXPECT_TRUE(contains(what_of(e), "exit code 5")) << what_of(e);
}

// --- recycling ---------------------------------------------------------------------------------

TEST_F(recycling_test, max_tasks_per_child_replaces_workers) {
  process_pool pool(ex(), {.workers = 2, .max_tasks_per_child = 3});
  std::map<int, int> tasks_by_pid;
  run([&]() -> asio::awaitable<void> {
    std::vector<coproc::future<int>> fs;
    for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(worker_pid));
    for (auto& f : fs) {
      const int pid = co_await f.async_get();
      ++tasks_by_pid[pid];
    }
    co_await pool.async_shutdown();
  }());
  EXPECT_GE(tasks_by_pid.size(), 7u) << "20 tasks, at most 3 per worker";
  for (auto [pid, n] : tasks_by_pid) EXPECT_LE(n, 3) << "worker " << pid;
  const auto s = pool.stats();
  EXPECT_EQ(s.done, 20u);
  EXPECT_GE(s.worker_restarts, tasks_by_pid.size() - 2);
  expect_settled(s);
}

TEST_F(recycling_test, max_worker_age_replaces_workers_and_work_goes_on) {
  process_pool pool(ex(), {.workers = 2, .max_worker_age = std::chrono::milliseconds(20)});
  std::set<int> pids;
  run([&]() -> asio::awaitable<void> {
    std::vector<coproc::future<int>> fs;
    for (int i = 0; i < 24; ++i) fs.push_back(pool.submit(aging_pid, 5));
    for (auto& f : fs) {
      const int pid = co_await f.async_get();
      pids.insert(pid);
    }
    co_await pool.async_shutdown();
  }());
  EXPECT_GT(pids.size(), 2u) << "24 tasks of 5 ms on 2 workers that live 20 ms";
  const auto s = pool.stats();
  EXPECT_EQ(s.done, 24u);
  EXPECT_GE(s.worker_restarts, 1u);
  expect_settled(s);
}

TEST_F(recycling_test, max_worker_memory_replaces_workers_and_work_goes_on) {
  // A worker starts as a copy of this process (at most as large): its limit is this
  // process's size plus 32 MiB. Each task leaves more than the limit behind.
  const std::size_t limit = resident_bytes() + (std::size_t(32) << 20);
  const int hog_mib = static_cast<int>(limit >> 20) + 16;
  process_pool pool(ex(), {.workers = 2, .max_worker_memory = limit});
  std::map<int, int> tasks_by_pid;
  run(
      [&]() -> asio::awaitable<void> {
        std::vector<coproc::future<int>> fs;
        for (int i = 0; i < 6; ++i) fs.push_back(pool.submit(hog, hog_mib));
        for (auto& f : fs) {
          const int pid = co_await f.async_get();
          ++tasks_by_pid[pid];
        }
        co_await pool.async_shutdown();
      }(),
      120s);
  EXPECT_EQ(tasks_by_pid.size(), 6u) << "a worker over the limit takes no second task";
  const auto s = pool.stats();
  EXPECT_EQ(s.done, 6u);
  EXPECT_GE(s.worker_restarts, 4u);
  expect_settled(s);
}

// --- faults ------------------------------------------------------------------------------------

TEST_F(fault_test, a_worker_killed_mid_task_fails_that_task_with_worker_died) {
  gate g(ex());
  process_pool pool(ex(), {.workers = 2, .name = "victims"});
  std::exception_ptr error;
  int victim_pid = -1;
  run([&]() -> asio::awaitable<void> {
    auto victim = pool.submit(gated, g.started_fd(), g.gate_fd(), 1);
    victim_pid = co_await g.started();
    const auto before = pool.worker_pids();
    EXPECT_TRUE(contains(before, victim_pid));
    EXPECT_EQ(::kill(victim_pid, SIGKILL), 0);
    error = co_await failure_of(victim);
    const auto after = pool.worker_pids();
    EXPECT_EQ(after.size(), 2u) << "a replacement started";
    EXPECT_FALSE(contains(after, victim_pid));
    for (int pid : before)
      if (pid != victim_pid) {
        EXPECT_TRUE(contains(after, pid)) << "the other worker is kept";
      }
    for (int i = 0; i < 10; ++i) {
      const int r = co_await pool.submit(square, i);
      EXPECT_EQ(r, i * i);
    }
    co_await pool.async_shutdown();
  }());
  auto died = caught_as<coproc::worker_died>(error);
  ASSERT_TRUE(died) << what_of(error);
  EXPECT_EQ(died->code(), coproc::errc::worker_died);
  EXPECT_EQ(died->pid(), victim_pid);
  EXPECT_EQ(died->status().signal(), SIGKILL);
  const std::string what = died->what();
  EXPECT_TRUE(contains(what, "signal 9")) << what;
  EXPECT_TRUE(contains(what, "OOM killer")) << what;
  EXPECT_TRUE(contains(what, "victims")) << what;
  EXPECT_TRUE(contains(what, std::to_string(victim_pid))) << what;
  const auto s = pool.stats();
  EXPECT_EQ(s.worker_restarts, 1u);
  EXPECT_EQ(s.failed, 1u);
  EXPECT_EQ(s.done, 10u);
  expect_settled(s);
}

TEST_F(fault_test, a_task_that_ends_its_worker_fails_with_worker_died) {
  struct {
    int how;
    exit_status status;
    std::string_view named;
  } cases[] = {{SIGSEGV, exit_status::signaled(SIGSEGV), "SIGSEGV"},
               {SIGABRT, exit_status::signaled(SIGABRT), "SIGABRT"},
               {-3, exit_status::exited(3), "exit code 3"},
               {0, exit_status::exited(0), "exit code 0"}};
  process_pool pool(ex(), {.workers = 1});
  for (const auto& c : cases) {
    std::exception_ptr e;
    int after = 0;
    run([&]() -> asio::awaitable<void> {
      auto f = pool.submit(end_worker, c.how);
      e = co_await failure_of(f);
      after = co_await pool.submit(square, 6);
    }());
    auto died = caught_as<coproc::worker_died>(e);
    ASSERT_TRUE(died) << c.named << ": " << what_of(e);
    EXPECT_EQ(died->status().is_signaled(), c.status.is_signaled()) << died->what();
    EXPECT_EQ(died->status().signal(), c.status.signal()) << died->what();
    EXPECT_EQ(died->status().code(), c.status.code()) << died->what();
    EXPECT_TRUE(contains(died->what(), c.named)) << died->what();
    EXPECT_FALSE(contains(died->what(), "OOM")) << died->what();
    EXPECT_EQ(after, 36) << "the replacement worker runs the next task";
  }
  run(pool.async_shutdown());
  const auto s = pool.stats();
  EXPECT_EQ(s.worker_restarts, 4u);
  EXPECT_EQ(s.failed, 4u);
  expect_settled(s);
}

TEST_F(fault_test, tasks_queued_behind_a_dying_task_still_succeed) {
  gate g(ex());
  process_pool pool(ex(), {.workers = 1, .prefetch = 4});
  std::exception_ptr error;
  std::vector<int> results;
  run([&]() -> asio::awaitable<void> {
    auto dying = pool.submit(gated_death, g.started_fd(), g.gate_fd());
    std::vector<coproc::future<int>> behind;
    for (int i = 1; i <= 4; ++i) behind.push_back(pool.submit(square, i));
    co_await g.started();
    const auto s = pool.stats();
    EXPECT_EQ(s.running, 5u) << "all five were sent to the one worker";
    EXPECT_EQ(s.queued, 0u);
    g.open();
    error = co_await failure_of(dying);
    for (auto& f : behind) {
      const int r = co_await f.async_get();
      results.push_back(r);
    }
    co_await pool.async_shutdown();
  }());
  EXPECT_TRUE(caught_as<coproc::worker_died>(error)) << what_of(error);
  EXPECT_EQ(results, (std::vector<int>{1, 4, 9, 16}));
  const auto s = pool.stats();
  EXPECT_EQ(s.failed, 1u);
  EXPECT_EQ(s.done, 4u);
  expect_settled(s);
}

TEST_F(fault_test, max_retries_resubmits_a_task_whose_worker_died) {
  temp_dir dir;
  process_pool retrying(ex(), {.workers = 1, .max_retries = 1});
  process_pool not_retrying(ex(), {.workers = 1});
  int retried = 0;
  std::exception_ptr once, twice;
  run([&]() -> asio::awaitable<void> {
    auto f = retrying.submit(crash_once, (dir / "flag-1").string());
    retried = co_await f.async_get();
    auto g1 = not_retrying.submit(crash_once, (dir / "flag-2").string());
    once = co_await failure_of(g1);
    auto g2 = retrying.submit(always_crash, (dir / "attempts").string());
    twice = co_await failure_of(g2);
    co_await retrying.async_shutdown();
    co_await not_retrying.async_shutdown();
  }());
  EXPECT_EQ(retried, 42);
  EXPECT_TRUE(caught_as<coproc::worker_died>(once)) << what_of(once);
  EXPECT_TRUE(caught_as<coproc::worker_died>(twice)) << what_of(twice);
  EXPECT_EQ(read_file(dir / "attempts"), "xx") << "the first attempt and one retry";
  EXPECT_EQ(retrying.stats().worker_restarts, 3u);
  expect_settled(retrying.stats());
}

TEST_F(fault_test, a_task_past_its_timeout_fails_and_only_its_worker_is_replaced) {
  gate g(ex());
  process_pool pool(ex(), {.workers = 2, .task_timeout = std::chrono::milliseconds(500)});
  std::exception_ptr error;
  run([&]() -> asio::awaitable<void> {
    auto slow = pool.submit(gated, g.started_fd(), g.gate_fd(), 1);
    const int slow_pid = co_await g.started();
    const auto before = pool.worker_pids();
    int other_pid = -1;
    for (int pid : before)
      if (pid != slow_pid) other_pid = pid;
    const int quick_pid = co_await pool.submit(worker_pid);
    EXPECT_EQ(quick_pid, other_pid) << "a quick task runs on the other worker meanwhile";
    error = co_await failure_of(slow);
    const auto after = pool.worker_pids();
    EXPECT_EQ(after.size(), 2u);
    EXPECT_FALSE(contains(after, slow_pid)) << "the timed-out worker was killed";
    EXPECT_TRUE(contains(after, other_pid)) << "the other worker was kept";
    const int later = co_await pool.submit(square, 8);
    EXPECT_EQ(later, 64);
    co_await pool.async_shutdown();
  }());
  EXPECT_EQ(code_of(error), coproc::errc::timed_out) << what_of(error);
  EXPECT_TRUE(contains(what_of(error), "timeout")) << what_of(error);
  const auto s = pool.stats();
  EXPECT_EQ(s.worker_restarts, 1u);
  EXPECT_EQ(s.failed, 1u);
  EXPECT_EQ(s.done, 2u);
  expect_settled(s);
}

TEST_F(fault_test, terminate_workers_fails_running_tasks_and_cancels_queued_ones) {
  check_signalled_workers(false);
}

TEST_F(fault_test, kill_workers_fails_running_tasks_and_cancels_queued_ones) {
  check_signalled_workers(true);
}

TEST_F(fault_test, shutdown_cancelling_futures_still_resolves_tasks_a_dead_worker_left) {
  // Tasks that a dead worker had not started go back to the queue. To their futures they are
  // running (they had been sent), so cancel_futures cannot cancel them: they must still
  // resolve. They stay queued when the pool sends fewer tasks ahead than before: quick tasks
  // make it send deep batches, one slow result makes it send one task ahead again.
  gate doomed_gate(ex()), rest(ex());
  process_pool pool(ex(), {.workers = 2});
  std::vector<coproc::future<int>> held;
  std::uint64_t queued_at_shutdown = 0;
  run([&]() -> asio::awaitable<void> {
    std::vector<coproc::future<int>> warm;
    for (int i = 0; i < 300; ++i) warm.push_back(pool.submit(square, i));
    for (auto& f : warm) co_await f.async_get();
    auto doomed = pool.submit(gated, doomed_gate.started_fd(), doomed_gate.gate_fd(), -1);
    const int doomed_pid = co_await doomed_gate.started();
    for (int i = 0; i < 12; ++i)
      held.push_back(pool.submit(gated, rest.started_fd(), rest.gate_fd(), i));
    co_await rest.started();  // the other worker runs one of them
    auto any_done = std::make_shared<coproc::promise<void>>(ex());
    auto any_done_future = any_done->get_future();
    for (auto& f : held) f.add_done_callback([any_done] { any_done->set_value(); });
    asio::steady_timer later(ex(), 50ms);  // so that this task takes a while
    co_await later.async_wait(asio::use_awaitable);
    rest.open();
    co_await any_done_future.async_get();
    EXPECT_EQ(::kill(doomed_pid, SIGKILL), 0);
    auto e = co_await failure_of(doomed);
    EXPECT_TRUE(caught_as<coproc::worker_died>(e)) << what_of(e);
    queued_at_shutdown = pool.stats().queued;
    pool.shutdown(false, true);
    rest.open(64);
    co_await pool.async_shutdown();
  }());
  EXPECT_GT(queued_at_shutdown, 0u) << "the scenario needs requeued tasks left in the queue";
  std::size_t unresolved = 0;
  for (std::size_t i = 0; i < held.size(); ++i) {
    auto& f = held[i];
    if (!f.done()) {
      ++unresolved;
      continue;
    }
    EXPECT_FALSE(f.cancelled()) << i;
    if (!f.exception()) {
      EXPECT_EQ(f.get(), static_cast<int>(i));
    }
  }
  EXPECT_EQ(unresolved, 0u) << "futures that never resolve";
  expect_settled(pool.stats());
}

TEST_F(fault_test, ten_thousand_tasks_under_random_worker_kills) {
  constexpr int n = 10'000;
  process_pool pool(ex(), {.workers = 4});
  // Counted by done callbacks; shared with them, so a failed test leaves nothing dangling.
  struct tally {
    std::vector<int> resolutions = std::vector<int>(n, 0);
    int resolved = 0, ok = 0, died = 0, wrong = 0, other = 0;
    std::string other_what;
  };
  auto t = std::make_shared<tally>();
  std::vector<coproc::future<long long>> fs;
  fs.reserve(n);
  for (int i = 0; i < n; ++i) {
    fs.push_back(pool.submit(busy_double, i));
    fs.back().add_done_callback([t, i](const coproc::future<long long>& f) {
      ++t->resolutions[static_cast<std::size_t>(i)];
      ++t->resolved;
      if (auto e = f.exception()) {
        if (caught_as<coproc::worker_died>(e)) {
          ++t->died;
        } else {
          ++t->other;
          t->other_what = what_of(e);
        }
      } else if (f.get() == 2LL * i) {
        ++t->ok;
      } else {
        ++t->wrong;
      }
    });
  }
  std::atomic<int> kills{0};
  {
    std::atomic<bool> stop{false};
    std::thread killer([&] {
      std::mt19937 rng(12345);
      while (!stop) {
        std::this_thread::sleep_for(3ms);  // a kill every few milliseconds
        const auto pids = pool.worker_pids();
        if (pids.empty()) continue;
        const int pid = pids[std::uniform_int_distribution<std::size_t>(0, pids.size() - 1)(rng)];
        if (signal_child(pid, SIGKILL)) ++kills;
      }
    });
    EXPECT_TRUE(run_until([&] { return t->resolved >= n; }, 240s))
        << t->resolved << " of " << n << " resolved";
    stop = true;
    killer.join();
  }
  run(pool.async_shutdown());
  RecordProperty("kills", kills.load());
  RecordProperty("worker_died", t->died);
  EXPECT_EQ(t->resolved, n);
  EXPECT_EQ(std::count(t->resolutions.begin(), t->resolutions.end(), 1), n) << "each exactly once";
  EXPECT_EQ(t->ok + t->died, n);
  EXPECT_EQ(t->wrong, 0);
  EXPECT_EQ(t->other, 0) << t->other_what;
  EXPECT_GT(kills, 0);
  EXPECT_LE(t->died, kills) << "a kill fails at most the one task its worker was running";
  const auto s = pool.stats();
  EXPECT_EQ(s.submitted, static_cast<std::uint64_t>(n));
  EXPECT_EQ(s.done, static_cast<std::uint64_t>(t->ok));
  EXPECT_EQ(s.failed, static_cast<std::uint64_t>(t->died));
  EXPECT_EQ(s.cancelled, 0u);
  EXPECT_GT(s.worker_restarts, 0u);
  expect_settled(s);
}

TEST_F(fault_test, workers_die_with_the_pools_process) {
  // A child of the test makes a pool, reports its workers' pids and ends abruptly: no
  // destructor runs. The workers must not outlive it.
  raw_pipe report;
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int code = 0;
    try {
      report.close_read();
      asio::io_context local;
      process_pool pool(local.get_executor(), {.workers = 3});
      std::string line;
      for (int pid : pool.worker_pids()) line += std::to_string(pid) + " ";
      line += "\n";
      if (::write(report.write_end(), line.data(), line.size()) != ssize_t(line.size())) code = 2;
      ::_exit(code);  // abruptly: the pool is never destroyed
    } catch (...) {
      code = 1;
    }
    ::_exit(code);
  }
  report.close_write();
  std::string line;
  for (;;) {
    pollfd p{report.read_end(), POLLIN, 0};
    if (::poll(&p, 1, 60'000) <= 0) break;  // a hang guard
    char c;
    if (::read(report.read_end(), &c, 1) != 1 || c == '\n') break;
    line.push_back(c);
  }
  std::vector<int> pids;
  std::istringstream in(line);
  for (int pid; in >> pid;) pids.push_back(pid);
  std::vector<int> pidfds;
  for (int pid : pids) {
    const int fd = pidfd_open(pid);
    if (fd >= 0) pidfds.push_back(fd);  // ESRCH: already gone
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_EQ(exit_status::from_wait_status(status), exit_status::exited(0));
  EXPECT_EQ(pids.size(), 3u) << line;
  for (int fd : pidfds) {
    pollfd p{fd, POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 60'000), 1) << "a worker outlived its pool's process";
    ::close(fd);
  }
}

TEST_F(fault_test, a_pool_with_its_own_loop_made_on_a_thread_that_ends_keeps_its_workers) {
  // PR_SET_PDEATHSIG ties a worker to the thread that forked it: such a pool forks on its own
  // event loop thread, not on the thread that constructs it. This one waits until each worker
  // has run its initializer (so is fully set up), then ends.
  gate g;
  const int report_fd = g.started_fd();
  std::unique_ptr<process_pool> pool;
  std::vector<int> initialized;
  std::thread([&] {
    pool = std::make_unique<process_pool>(coproc::pool_options{
        .workers = 2, .initializer = coproc::worker_initializer(report_pid, report_fd)});
    initialized.push_back(g.wait_started());
    initialized.push_back(g.wait_started());
  }).join();
  std::sort(initialized.begin(), initialized.end());
  auto pids = pool->worker_pids();
  std::sort(pids.begin(), pids.end());
  EXPECT_EQ(initialized, pids);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(pool->submit(slow_square, i).get(), i * i);
    const int pid = pool->submit(worker_pid).get();
    EXPECT_TRUE(contains(pids, pid)) << "task ran on a replacement " << pid;
  }
  EXPECT_EQ(pool->stats().worker_restarts, 0u) << "workers died with the thread that made them";
  pool.reset();
}

TEST_F(fault_test, a_pool_made_on_a_thread_that_ends_still_completes_its_work) {
  // Its workers were forked on that thread and die with it (PR_SET_PDEATHSIG): the pool
  // replaces them, and no task is lost.
  std::unique_ptr<process_pool> pool;
  std::thread([&] {
    pool = std::make_unique<process_pool>(ex(), coproc::pool_options{.workers = 2});
  }).join();
  std::vector<int> results;
  run([&]() -> asio::awaitable<void> {
    for (int i = 0; i < 6; ++i) {
      const int r = co_await pool->submit(square, i);
      results.push_back(r);
    }
    co_await pool->async_shutdown();
  }());
  EXPECT_EQ(results, (std::vector<int>{0, 1, 4, 9, 16, 25}));
  expect_settled(pool->stats());
}

}  // namespace

int main(int argc, char** argv) {
  coproc::worker_hook(argc, argv);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
