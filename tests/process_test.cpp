// coproc::process and coproc::async_call: C++ callables in forked and spawned children.
//
// This executable has its own main: the spawn start method re-executes it, and
// coproc::worker_hook must run first there.
//
// What forked children run is plain code: no gtest macro (its results would be lost in the
// child), no io_context of the parent (its epoll instance is shared with the child). They
// report through blocking sends on a forked copy of a connection made by the test.
#include <coproc/process.hpp>

#include <coproc/error.hpp>
#include <coproc/pipe.hpp>

#include "fixture.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/strand.hpp>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <typeinfo>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace {

using namespace coproc_test;
using namespace boost::asio::experimental::awaitable_operators;
using coproc::exit_status;
using coproc::process;
using coproc::start_method;

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

// --- what the children run -----------------------------------------------------------------

/// Blocks until a signal ends the process.
[[noreturn]] void block_forever() {
  for (;;) ::pause();
}

/// The calling process's name as the kernel has it (/proc/self/comm without the newline).
std::string own_comm() {
  std::string s(64, '\0');
  const int fd = ::open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
  const ssize_t n = fd < 0 ? -1 : ::read(fd, s.data(), s.size());
  if (fd >= 0) ::close(fd);
  s.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  if (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

/// Before crashing on purpose: no core file (slow to write, and litter).
void no_core_dump() {
  rlimit none{0, 0};
  ::setrlimit(RLIMIT_CORE, &none);
}

/// Dies of `sig` at its default action (sanitizers catch SIGSEGV otherwise).
[[noreturn]] void die_of(int sig) {
  no_core_dump();
  ::signal(sig, SIG_DFL);
  ::raise(sig);
  ::_exit(99);
}

int pidfd_open(int pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

/// A free function for the fork start method (its pointer argument is not encodable).
void send_sum(coproc::connection* to, int a, int b) { to->send(a + b); }

/// The subclass-of-Process style: an object with a run() member.
struct reporter {
  coproc::connection* to;
  std::string text;
  void run() { to->send(text + " from " + std::to_string(::getpid())); }
};

/// An aggregate result, encoded field by field.
struct record {
  int id = 0;
  std::string name;
  std::vector<double> values;
  bool operator==(const record&) const = default;
};

struct unregistered_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct registered_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --- functions for the spawn start method (found by name in the re-executed program) --------

int square(int x) { return x * x; }
COPROC_REGISTER(square);

std::string repeat(std::string s, int n) {
  std::string r;
  for (int i = 0; i < n; ++i) r += s;
  return r;
}
COPROC_REGISTER(repeat);

int checked_root(int x) {
  if (x < 0) throw std::domain_error("checked_root of " + std::to_string(x));
  int r = 0;
  while ((r + 1) * (r + 1) <= x) ++r;
  return r;
}
COPROC_REGISTER(checked_root);

void fail_with(std::string message) { throw std::out_of_range(message); }
COPROC_REGISTER(fail_with);

void write_marker(std::string path, std::string text) {
  std::ofstream(path, std::ios::binary) << text;
}
COPROC_REGISTER(write_marker);

/// This process's pid and its parent's.
std::pair<int, int> ids() { return {::getpid(), ::getppid()}; }
COPROC_REGISTER(ids);

std::string spawned_comm() { return own_comm(); }
COPROC_REGISTER(spawned_comm);

/// Dies of signal `sig`, or exits with `-sig` for a negative one, without a result.
int end_without_result(int sig) {
  if (sig < 0) ::_exit(-sig);
  die_of(sig);
}
COPROC_REGISTER(end_without_result);

int not_registered(int x) { return x; }

coproc::call_options spawn_options(std::string name = {}) {
  return {.method = start_method::spawn, .name = std::move(name)};
}

// --- the fixture ---------------------------------------------------------------------------

/// A connection between the test and its children: the test keeps `parent`, children use
/// their forked copy of `child`.
struct channel {
  coproc::connection parent;
  coproc::connection child;
};

class process_test : public io_test {
 protected:
  channel make_channel() {
    auto [a, b] = coproc::make_pipe(ex());
    return {std::move(a), std::move(b)};
  }

  /// The coroutine `make()` returns, run on a new strand of the test's io_context.
  template <typename Make>
  auto on_strand(Make make) {
    return asio::co_spawn(asio::make_strand(ctx()), std::move(make), asio::use_awaitable);
  }

  /// Runs `a`, which must fail with an exception of exactly type E; returns it.
  template <typename E, typename T>
  std::optional<E> fails_with(asio::awaitable<T> a) {
    try {
      run(std::move(a));
      ADD_FAILURE() << "no exception; expected " << typeid(E).name();
    } catch (const E& e) {
      EXPECT_TRUE(typeid(e) == typeid(E)) << "arrived as " << typeid(e).name() << ": " << e.what();
      return e;
    }
    return std::nullopt;
  }

  /// Runs `a`, which must fail with a process_error of `status` whose what() names it.
  template <typename T>
  void ends_without_result(asio::awaitable<T> a, exit_status status, std::string_view named) {
    auto e = fails_with<coproc::process_error>(std::move(a));
    ASSERT_TRUE(e);
    EXPECT_EQ(e->status().is_signaled(), status.is_signaled()) << e->what();
    EXPECT_EQ(e->status().signal(), status.signal()) << e->what();
    EXPECT_EQ(e->status().code(), status.code()) << e->what();
    const std::string what = e->what();
    EXPECT_NE(what.find(named), std::string::npos) << what;
    EXPECT_NE(what.find("without delivering its result"), std::string::npos) << what;
  }
};

using async_call_test = process_test;
using spawn_test = process_test;

// --- process: construction, start, join ----------------------------------------------------

TEST_F(process_test, a_lambda_with_arguments_runs_in_a_child) {
  channel l = make_channel();
  process p(
      ex(),
      [&l](int n, const std::string& word) {
        l.child.send(word + " " + std::to_string(n));
        l.child.send(static_cast<int>(::getppid()));
      },
      42, std::string("answer"));
  EXPECT_EQ(p.pid(), -1);
  EXPECT_FALSE(p.daemon());
  p.start();
  l.child.close();
  EXPECT_GT(p.pid(), 0);
  EXPECT_NE(p.pid(), ::getpid());
  EXPECT_EQ(run(l.parent.async_receive<std::string>()), "answer 42");
  EXPECT_EQ(run(l.parent.async_receive<int>()), ::getpid()) << "the child's parent is this process";
  EXPECT_EQ(p.join(), exit_status::exited(0));
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(p.status(), exit_status::exited(0));
  auto [ec, v] = run(l.parent.async_receive<int>(tuple_awaitable));
  EXPECT_EQ(ec, asio::error::eof) << "every copy of the child's end is gone";
}

TEST_F(process_test, a_free_function_runs_in_a_child) {
  channel l = make_channel();
  process p(ex(), send_sum, &l.child, 40, 2);
  p.start();
  EXPECT_EQ(run(l.parent.async_receive<int>()), 42);
  EXPECT_EQ(p.join(), exit_status::exited(0));
}

TEST_F(process_test, an_object_with_a_run_member_runs_in_a_child) {
  channel l = make_channel();
  process p(ex(), coproc::process_options{.name = "reporter"}, reporter{&l.child, "hello"});
  EXPECT_EQ(p.name(), "reporter");
  p.start();
  EXPECT_EQ(run(l.parent.async_receive<std::string>()), "hello from " + std::to_string(p.pid()));
  EXPECT_EQ(p.join(), exit_status::exited(0));
}

TEST_F(process_test, default_names_count_the_processes) {
  auto noop = [] {};
  process a(ex(), noop);
  process b(ex(), noop);
  const std::string prefix = "process-";
  ASSERT_EQ(a.name().rfind(prefix, 0), 0u) << a.name();
  ASSERT_EQ(b.name().rfind(prefix, 0), 0u) << b.name();
  const std::string na = a.name().substr(prefix.size()), nb = b.name().substr(prefix.size());
  ASSERT_FALSE(na.empty());
  EXPECT_EQ(na.find_first_not_of("0123456789"), std::string::npos) << a.name();
  EXPECT_EQ(std::stoi(nb), std::stoi(na) + 1) << a.name() << " then " << b.name();
}

TEST_F(process_test, the_name_is_the_childs_process_name) {
  channel l = make_channel();
  // The child reports its own /proc/self/comm, then waits for the test to read it from outside.
  auto report = [&l] {
    l.child.send(own_comm());
    (void)l.child.receive<int>();
  };
  process named(ex(), {.name = "coproc-worker"}, report);
  process truncated(ex(), {.name = "a-name-longer-than-15-bytes"}, report);
  process unnamed(ex(), report);
  struct {
    process& p;
    std::string comm;
  } cases[] = {{named, "coproc-worker"},
               {truncated, "a-name-longer-t"},  // PR_SET_NAME keeps the first 15 bytes
               {unnamed, unnamed.name()}};
  for (auto& [p, comm] : cases) {
    p.start();
    EXPECT_EQ(run(l.parent.async_receive<std::string>()), comm);
    EXPECT_EQ(read_file("/proc/" + std::to_string(p.pid()) + "/comm"), comm + "\n");
    l.parent.send(0);
    EXPECT_EQ(p.join(), exit_status::exited(0));
  }
}

TEST_F(process_test, exitcode_is_alive_and_join_with_a_timeout) {
  channel l = make_channel();
  process p(ex(), [&l] {
    l.child.send(1);
    (void)l.child.receive<int>();
  });
  EXPECT_FALSE(p.exitcode().has_value());
  EXPECT_FALSE(p.is_alive());
  EXPECT_FALSE(p.status().has_value());
  p.start();
  EXPECT_EQ(run(l.parent.async_receive<int>()), 1);  // the child now blocks on the handshake
  EXPECT_TRUE(p.is_alive());
  EXPECT_FALSE(p.exitcode().has_value()) << "nullopt while running";
  EXPECT_FALSE(p.join(0ms).has_value());
  EXPECT_FALSE(p.join(20ms).has_value()) << "the child cannot exit before the handshake";
  EXPECT_TRUE(p.is_alive());
  l.parent.send(2);
  EXPECT_EQ(p.join(60s), exit_status::exited(0));
  EXPECT_FALSE(p.is_alive());
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(p.join(0ms), exit_status::exited(0)) << "joining again gives the same status";
  EXPECT_EQ(p.join(), exit_status::exited(0));
}

TEST_F(process_test, kill_and_terminate_give_negative_exitcodes) {
  struct {
    void (process::*send)();
    int sig;
  } cases[] = {{&process::kill, SIGKILL}, {&process::terminate, SIGTERM}};
  for (auto [send, sig] : cases) {
    channel l = make_channel();
    process p(ex(), [&l] {
      l.child.send(1);
      block_forever();
    });
    p.start();
    EXPECT_EQ(run(l.parent.async_receive<int>()), 1);
    EXPECT_TRUE(p.is_alive());
    (p.*send)();
    EXPECT_EQ(p.join(), exit_status::signaled(sig));
    EXPECT_EQ(p.exitcode(), -sig);
    EXPECT_FALSE(p.is_alive());
    EXPECT_NO_THROW(p.kill()) << "no-op once reaped";
    EXPECT_NO_THROW(p.terminate());
    EXPECT_EQ(p.exitcode(), -sig);
  }
}

TEST_F(process_test, async_join_in_a_coroutine) {
  channel l = make_channel();
  process p(ex(), [&l] { ::_exit(l.child.receive<int>()); });
  p.start();
  auto st = run([&]() -> asio::awaitable<exit_status> {
    co_await l.parent.async_send(5);
    co_return co_await p.async_join();
  }());
  EXPECT_EQ(st, exit_status::exited(5));
  EXPECT_EQ(p.exitcode(), 5);
  EXPECT_EQ(run(p.async_join()), exit_status::exited(5)) << "again: the same status at once";
}

TEST_F(process_test, joining_before_start_is_an_error) {
  process p(ex(), [] {});
  try {
    p.join();
    ADD_FAILURE() << "join before start returned";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), coproc::errc::not_running);
  }
  EXPECT_THROW(p.join(10ms), boost::system::system_error);
  auto [ec, st] = run(p.async_join(tuple_awaitable));
  EXPECT_EQ(ec, coproc::errc::not_running);
  EXPECT_FALSE(p.is_alive());
  EXPECT_EQ(p.pid(), -1);
  EXPECT_NO_THROW(p.kill());
  EXPECT_NO_THROW(p.terminate());
}

TEST_F(process_test, starting_twice_is_a_logic_error) {
  process p(ex(), [] {});
  p.set_daemon(false);
  p.start();
  const int pid = p.pid();
  EXPECT_THROW(p.start(), std::logic_error);
  EXPECT_EQ(p.pid(), pid) << "the running child is kept";
  EXPECT_THROW(p.set_daemon(true), std::logic_error);
  EXPECT_EQ(p.join(), exit_status::exited(0));
  EXPECT_THROW(p.start(), std::logic_error) << "also after join";
}

TEST_F(process_test, an_exception_escaping_the_callable_exits_with_code_1) {
  raw_pipe err;
  process p(ex(), {.name = "thrower"}, [&err] {
    ::dup2(err.write_end(), STDERR_FILENO);
    throw std::runtime_error("boom");
  });
  process q(ex(), {.name = "int-thrower"}, [&err] {
    ::dup2(err.write_end(), STDERR_FILENO);
    throw 42;
  });
  p.start();
  EXPECT_EQ(p.join(), exit_status::exited(1));
  EXPECT_EQ(p.exitcode(), 1);
  q.start();
  EXPECT_EQ(q.join(), exit_status::exited(1));
  err.close_write();
  auto reader = err.reader(ex());
  EXPECT_EQ(run(reader.async_read_all()),
            "process thrower: std::runtime_error: boom\n"
            "process int-thrower: unknown exception\n");
}

TEST_F(process_test, the_exit_code_of_a_child_that_calls_exit) {
  process p(ex(), [] { ::_exit(3); });
  p.start();
  EXPECT_EQ(p.join(), exit_status::exited(3));
  EXPECT_EQ(p.exitcode(), 3);
}

// --- process: ownership --------------------------------------------------------------------

TEST_F(process_test, destroying_a_started_process_kills_and_reaps_it) {
  channel l = make_channel();
  int pid = -1;
  {
    process p(ex(), [&l] {
      l.child.send(static_cast<int>(::getpid()));
      block_forever();
    });
    p.start();
    pid = run(l.parent.async_receive<int>());
    EXPECT_EQ(pid, p.pid());
  }
  // Destruction does not block; the reaper collects the killed child as the context runs.
  EXPECT_TRUE(run_until([&] { return reaped(pid); })) << "pid " << pid << " was not reaped";
  {
    process never_started(ex(), [] {});
  }  // nothing to kill
}

TEST_F(process_test, a_detached_process_runs_on) {
  channel l = make_channel();
  int pid = -1;
  {
    process p(ex(), [&l] {
      l.child.send(static_cast<int>(::getpid()));
      l.child.send(l.child.receive<int>() * 2);
    });
    p.start();
    pid = run(l.parent.async_receive<int>());
    p.detach();
    auto [ec, st] = run(p.async_join(tuple_awaitable));
    EXPECT_EQ(ec, coproc::errc::not_running);
    EXPECT_THROW(p.join(), boost::system::system_error);
    EXPECT_NO_THROW(p.kill()) << "a detached process is not signalled";
  }
  // The handle is gone; the child still answers, then exits on its own.
  l.parent.send(21);
  EXPECT_EQ(run(l.parent.async_receive<int>()), 42);
  EXPECT_TRUE(run_until([&] { return exited_unreaped(pid); })) << "pid " << pid << " did not exit";
  EXPECT_FALSE(reaped(pid)) << "nothing has polled the detached children yet";
  // The next process started on the same context reaps it.
  process next(ex(), [] {});
  next.start();
  EXPECT_TRUE(reaped(pid)) << "pid " << pid << " was not reaped by the next start";
  EXPECT_EQ(next.join(), exit_status::exited(0));
}

// An intermediate process starts a grandchild that blocks forever and reports its pid, then
// waits for the test's go and exits. The test watches the grandchild through a pidfd.
struct lineage {
  channel to_intermediate;
  channel to_grandchild;
  std::optional<process> intermediate;
  int grandchild = -1;
  std::optional<asio::posix::stream_descriptor> watch;  // the grandchild's pidfd

  ~lineage() {
    // A test that failed half-way must not leave a grandchild blocking forever; through the
    // pidfd, so never a recycled pid.
    if (watch && watch->is_open())
      ::syscall(SYS_pidfd_send_signal, watch->native_handle(), SIGKILL, nullptr, 0);
  }
};

class lineage_test : public process_test {
 protected:
  void start(lineage& t, bool daemon) {
    t.to_intermediate = make_channel();
    t.to_grandchild = make_channel();
    t.intermediate.emplace(ex(), coproc::process_options{.name = "intermediate"}, [&t, daemon] {
      // The parent's io_context must not be used in a forked child: a fresh one.
      asio::io_context local;
      auto* grandchild =
          new process(local.get_executor(), {.name = "grandchild", .daemon = daemon}, [&t] {
            t.to_grandchild.child.send(static_cast<int>(::getpid()));
            for (;;) {  // answers pings until killed
              const int ping = t.to_grandchild.child.receive<int>();
              t.to_grandchild.child.send(ping + 1);
            }
          });
      grandchild->start();
      if (!daemon) grandchild->detach();
      (void)t.to_intermediate.child.receive<int>();
      // Leave without destroying the handle (whose destructor would kill a daemon): only the
      // daemon flag may end the grandchild.
      ::_exit(0);
    });
    t.intermediate->start();
    t.to_intermediate.child.close();
    t.to_grandchild.child.close();
    t.grandchild = run(t.to_grandchild.parent.async_receive<int>());
    ASSERT_GT(t.grandchild, 0);
    ASSERT_NE(t.grandchild, t.intermediate->pid());
    const int fd = pidfd_open(t.grandchild);
    ASSERT_GE(fd, 0) << "the grandchild blocks: it must be alive; " << std::strerror(errno);
    t.watch.emplace(ex(), fd);
    // It answers while the intermediate lives.
    t.to_grandchild.parent.send(1);
    ASSERT_EQ(run(t.to_grandchild.parent.async_receive<int>()), 2);
    t.to_intermediate.parent.send(0);
    ASSERT_EQ(run(t.intermediate->async_join()), exit_status::exited(0));
  }

  /// Completes when the grandchild has exited (bounded by the fixture's deadline).
  void wait_gone(lineage& t) {
    run(t.watch->async_wait(asio::posix::descriptor_base::wait_read, asio::use_awaitable));
  }
};

TEST_F(lineage_test, a_daemon_process_dies_with_its_parent) {
  lineage t;
  start(t, true);
  if (HasFatalFailure()) return;
  wait_gone(t);  // the pidfd turns readable when the process exits
}

TEST_F(lineage_test, a_detached_process_survives_its_parent) {
  lineage t;
  start(t, false);
  if (HasFatalFailure()) return;
  // The intermediate is gone; the grandchild still answers.
  t.to_grandchild.parent.send(10);
  EXPECT_EQ(run(t.to_grandchild.parent.async_receive<int>()), 11);
  ASSERT_EQ(::syscall(SYS_pidfd_send_signal, t.watch->native_handle(), SIGKILL, nullptr, 0), 0)
      << std::strerror(errno);
  wait_gone(t);
  auto [ec, v] = run(t.to_grandchild.parent.async_receive<int>(tuple_awaitable));
  EXPECT_EQ(ec, asio::error::eof) << "the grandchild's end closed with it";
}

// --- async_call (fork) -----------------------------------------------------------------------

TEST_F(async_call_test, results_of_several_types) {
  EXPECT_EQ(run(coproc::async_call([] { return 6 * 7; })), 42);
  EXPECT_EQ(
      run(coproc::async_call([](const std::string& s, int n) { return s + std::to_string(n); },
                             std::string("n="), 5)),
      "n=5");
  EXPECT_EQ(run(coproc::async_call(square, 9)), 81) << "a free function";
  EXPECT_EQ(run(coproc::async_call([] {
              return std::vector<int>{1, 2, 3};
            })),
            (std::vector<int>{1, 2, 3}));
  const record r{7, "seven", {0.5, 1.5, -2.25}};
  EXPECT_EQ(run(coproc::async_call([&r] { return r; })), r);
  const std::map<std::string, int> m{{"one", 1}, {"two", 2}, {"three", 3}};
  EXPECT_EQ(run(coproc::async_call([&m] { return m; })), m);
  EXPECT_EQ(run(coproc::async_call([] { return std::optional<double>(2.5); })), 2.5);
  EXPECT_EQ(run(coproc::async_call([] { return std::string(); })), "");
  EXPECT_EQ(run(coproc::async_call([] { return ::getppid(); })), ::getpid());
  EXPECT_NE(run(coproc::async_call([] { return ::getpid(); })), ::getpid());
}

TEST_F(async_call_test, void_functions_and_captured_state) {
  channel l = make_channel();
  run(coproc::async_call([&l] { l.child.send(std::string("ran")); }));
  EXPECT_EQ(run(l.parent.async_receive<std::string>()), "ran");

  std::vector<int> v{1, 2, 3};
  const int extra = 100;
  auto grown = run(coproc::async_call([&v, extra] {
    v.push_back(extra);
    return v;
  }));
  EXPECT_EQ(grown, (std::vector<int>{1, 2, 3, 100}));
  EXPECT_EQ(v, (std::vector<int>{1, 2, 3})) << "the child changed its own copy";

  auto counter = [n = 40]() mutable { return n += 2; };
  EXPECT_EQ(run(coproc::async_call(counter)), 42);
  EXPECT_EQ(run(coproc::async_call(counter)), 42) << "each call starts from the parent's state";
}

TEST_F(async_call_test, move_only_functions_and_arguments) {
  auto owned = std::make_unique<int>(20);
  EXPECT_EQ(run(coproc::async_call([p = std::move(owned)] { return *p + 1; })), 21);
  EXPECT_EQ(run(coproc::async_call([](std::unique_ptr<int>& p) { return *p * 2; },
                                   std::make_unique<int>(21))),
            42);
  std::optional<int> got;
  coproc::async_call(
      ex(), {}, [&](std::exception_ptr e, int v) { got = e ? -1 : v; },
      [](std::unique_ptr<int>& p) { return *p; }, std::make_unique<int>(7));
  ASSERT_TRUE(run_until([&] { return got.has_value(); }));
  EXPECT_EQ(got, 7);

  channel l = make_channel();
  process p(
      ex(), [](std::unique_ptr<int>& v, coproc::connection* to) { to->send(*v); },
      std::make_unique<int>(8), &l.child);
  p.start();
  EXPECT_EQ(run(l.parent.async_receive<int>()), 8);
  EXPECT_EQ(p.join(), exit_status::exited(0));
}

TEST_F(async_call_test, an_awaitable_may_be_stored_before_it_is_awaited) {
  // The coroutine form must own its function and arguments: the temporaries passed to it are
  // gone when the stored awaitable first runs.
  auto s = run([]() -> asio::awaitable<std::string> {
    auto call = coproc::async_call([](const std::string& s, int n) { return repeat(s, n); },
                                   std::string("abc"), 3);
    co_return co_await std::move(call);
  }());
  EXPECT_EQ(s, "abcabcabc");
  auto t = run([]() -> asio::awaitable<int> {
    auto call = coproc::async_call(spawn_options(), square, 11);
    co_return co_await std::move(call);
  }());
  EXPECT_EQ(t, 121);
}

TEST_F(async_call_test, a_100_mb_result) {
  constexpr std::size_t size = std::size_t(100) << 20;
  const std::string s = run(coproc::async_call([] { return pattern(size); }), 100s);
  ASSERT_EQ(s.size(), size);
  EXPECT_EQ(pattern_mismatch(s), std::string::npos);
}

TEST_F(async_call_test, a_result_over_the_limit_is_an_error) {
  coproc::call_options options;
  options.max_result_size = 1000;
  try {
    run(coproc::async_call(options, [] { return std::string(100000, 'x'); }));
    ADD_FAILURE() << "the result arrived";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), coproc::errc::message_too_large) << e.what();
  }
  EXPECT_EQ(run(coproc::async_call(options, [] { return std::string(900, 'x'); })).size(), 900u);
}

TEST_F(async_call_test, exceptions_arrive_as_their_types) {
  auto ia = fails_with<std::invalid_argument>(
      coproc::async_call([]() -> int { throw std::invalid_argument("bad argument"); }));
  ASSERT_TRUE(ia);
  EXPECT_STREQ(ia->what(), "bad argument");

  auto oor = fails_with<std::out_of_range>(
      coproc::async_call([] { throw std::out_of_range("index 7 of 3"); }));
  ASSERT_TRUE(oor);
  EXPECT_STREQ(oor->what(), "index 7 of 3");

  auto generic = fails_with<std::system_error>(coproc::async_call([]() -> std::string {
    throw std::system_error(std::make_error_code(std::errc::permission_denied),
                            "opening the vault");
  }));
  ASSERT_TRUE(generic);
  EXPECT_EQ(generic->code(), std::make_error_code(std::errc::permission_denied));
  EXPECT_NE(std::string(generic->what()).find("opening the vault"), std::string::npos)
      << generic->what();

  auto sys = fails_with<std::system_error>(coproc::async_call(
      []() -> int { throw std::system_error(ENOENT, std::system_category(), "stat"); }));
  ASSERT_TRUE(sys);
  EXPECT_EQ(sys->code(), std::error_code(ENOENT, std::system_category()));
}

TEST_F(async_call_test, custom_exceptions_arrive_as_remote_error_unless_registered) {
  auto remote = fails_with<coproc::remote_error>(
      coproc::async_call([]() -> int { throw unregistered_error("custom failure"); }));
  ASSERT_TRUE(remote);
  EXPECT_NE(remote->type_name().find("unregistered_error"), std::string::npos)
      << remote->type_name();
  EXPECT_STREQ(remote->what(), "custom failure");

  auto unknown = fails_with<coproc::remote_error>(coproc::async_call([]() -> int { throw 42; }));
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->type_name(), "unknown exception");

  coproc::register_exception<registered_error>();
  auto registered = fails_with<registered_error>(
      coproc::async_call([] { throw registered_error("known failure"); }));
  ASSERT_TRUE(registered);
  EXPECT_STREQ(registered->what(), "known failure");
}

TEST_F(async_call_test, a_child_that_ends_without_a_result_is_a_process_error) {
  ends_without_result(coproc::async_call(coproc::call_options{.name = "segv-call"},
                                         []() -> int { die_of(SIGSEGV); }),
                      exit_status::signaled(SIGSEGV), "SIGSEGV");
  ends_without_result(coproc::async_call([]() -> int {
                        no_core_dump();
                        std::abort();
                      }),
                      exit_status::signaled(SIGABRT), "SIGABRT");
  ends_without_result(coproc::async_call([]() -> std::string { ::_exit(3); }),
                      exit_status::exited(3), "exit code 3");
  ends_without_result(coproc::async_call([] { ::_exit(0); }), exit_status::exited(0),
                      "exit code 0");
  // The call's name is in the message.
  auto e = fails_with<coproc::process_error>(
      coproc::async_call(coproc::call_options{.name = "named-call"}, [] { ::_exit(4); }));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->program(), "named-call");
  EXPECT_NE(std::string(e->what()).find("named-call"), std::string::npos) << e->what();
}

TEST_F(async_call_test, cancelling_a_call_kills_and_reaps_the_child) {
  channel l = make_channel();
  asio::cancellation_signal cancel;
  std::optional<std::exception_ptr> outcome;
  coproc::async_call(ex(), {},
                     asio::bind_cancellation_slot(
                         cancel.slot(), [&](std::exception_ptr e, int) { outcome.emplace(e); }),
                     [&l]() -> int {
                       l.child.send(static_cast<int>(::getpid()));
                       block_forever();
                     });
  const int pid = run(l.parent.async_receive<int>());
  EXPECT_FALSE(outcome.has_value());
  EXPECT_FALSE(reaped(pid));
  cancel.emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(run_until([&] { return outcome.has_value(); }));
  ASSERT_TRUE(*outcome) << "a cancelled call completes with an error";
  try {
    std::rethrow_exception(*outcome);
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), asio::error::operation_aborted) << e.what();
  }
  EXPECT_TRUE(reaped(pid)) << "the call completes only after its child was reaped";
}

TEST_F(async_call_test, a_call_that_loses_a_race_is_cancelled_and_its_child_reaped) {
  channel l = make_channel();
  auto blocker = [&l]() -> int {
    l.child.send(static_cast<int>(::getpid()));
    block_forever();
  };
  auto [index, pid] = run([&]() -> asio::awaitable<std::pair<std::size_t, int>> {
    auto call = coproc::async_call(blocker);
    auto pid_arrives = l.parent.async_receive<int>();
    auto v = co_await (std::move(call) || std::move(pid_arrives));
    co_return std::pair{v.index(), v.index() == 1 ? std::get<1>(v) : -1};
  }());
  EXPECT_EQ(index, 1u);
  ASSERT_GT(pid, 0);
  EXPECT_TRUE(reaped(pid)) << "the cancelled call reaped its child before completing";
}

TEST_F(async_call_test, destroying_the_context_kills_and_reaps_a_pending_call) {
  channel l = make_channel();
  int pid = -1;
  bool completed = false;
  {
    asio::io_context local;
    coproc::async_call(
        local.get_executor(), {}, [&](std::exception_ptr, int) { completed = true; },
        [&l]() -> int {
          l.child.send(static_cast<int>(::getpid()));
          block_forever();
        });
    ASSERT_TRUE(l.parent.poll(30s)) << "the child did not report";
    pid = l.parent.receive<int>();
    ASSERT_GT(pid, 0);
    EXPECT_FALSE(reaped(pid));
  }
  EXPECT_FALSE(completed) << "the context went away: the handler is destroyed, not called";
  EXPECT_TRUE(reaped(pid)) << "pid " << pid << " left behind by the context's destruction";
}

TEST_F(async_call_test, the_token_form_with_callbacks) {
  std::optional<std::pair<std::exception_ptr, std::string>> text;
  coproc::async_call(
      ex(), coproc::call_options{.name = "callback"},
      [&](std::exception_ptr e, std::string s) { text.emplace(e, std::move(s)); },
      [](const std::string& s, int n) { return repeat(s, n); }, std::string("ab"), 3);
  std::optional<std::exception_ptr> done;
  coproc::async_call(
      ex(), {}, [&](std::exception_ptr e) { done.emplace(e); }, [] {});
  std::optional<std::exception_ptr> failed;
  coproc::async_call(
      ex(), {}, [&](std::exception_ptr e, int) { failed.emplace(e); },
      []() -> int { throw std::out_of_range("from the callback's call"); });
  ASSERT_TRUE(run_until([&] { return text && done && failed; }));
  EXPECT_FALSE(text->first);
  EXPECT_EQ(text->second, "ababab");
  EXPECT_FALSE(*done);
  ASSERT_TRUE(*failed);
  EXPECT_THROW(std::rethrow_exception(*failed), std::out_of_range);
}

TEST_F(async_call_test, calls_on_an_io_context_run_by_two_threads) {
  EXPECT_EQ(run(coproc::async_call([] { return std::string("two threads"); }), 60s, 2),
            "two threads");
  // Asio's awaitable operators share cancellation state between their branches, so the
  // composite runs on a strand; the calls' own handlers still run on both threads.
  auto [a, b, c] =
      run(on_strand([]() -> asio::awaitable<std::tuple<int, std::string, int>> {
            auto f = [] { return ::getpid(); };
            auto g = [](const std::string& s) { return s + s; };
            int x = 9;
            std::string s = "xy";
            auto first = coproc::async_call(f);
            auto second = coproc::async_call(g, s);
            auto third = coproc::async_call(square, x);
            co_return co_await (std::move(first) && std::move(second) && std::move(third));
          }),
          60s, 2);
  EXPECT_NE(a, ::getpid());
  EXPECT_EQ(b, "xyxy");
  EXPECT_EQ(c, 81);
}

// --- the spawn start method ---------------------------------------------------------------------

TEST_F(spawn_test, a_registered_function_returns_its_value) {
  EXPECT_EQ(run(coproc::async_call(spawn_options(), square, 12)), 144);
  EXPECT_EQ(run(coproc::async_call(spawn_options(), repeat, std::string("ab"), 3)), "ababab");
  EXPECT_EQ(run(coproc::async_call(spawn_options(), checked_root, 49)), 7);
  auto [pid, ppid] = run(coproc::async_call(spawn_options(), ids));
  EXPECT_NE(pid, ::getpid());
  EXPECT_EQ(ppid, ::getpid());
  EXPECT_EQ(run(coproc::async_call(spawn_options("spawned-call"), spawned_comm)), "spawned-call");
  EXPECT_EQ(run(coproc::async_call(spawn_options(), spawned_comm)), "call");
}

TEST_F(spawn_test, a_void_function) {
  temp_dir dir;
  const std::string path = (dir / "marker").string();
  run(coproc::async_call(spawn_options(), write_marker, path, std::string("written")));
  EXPECT_EQ(read_file(path), "written");
}

TEST_F(spawn_test, exceptions_arrive_as_their_types) {
  auto d = fails_with<std::domain_error>(coproc::async_call(spawn_options(), checked_root, -4));
  ASSERT_TRUE(d);
  EXPECT_STREQ(d->what(), "checked_root of -4");
  auto o = fails_with<std::out_of_range>(
      coproc::async_call(spawn_options(), fail_with, std::string("spawned failure")));
  ASSERT_TRUE(o);
  EXPECT_STREQ(o->what(), "spawned failure");
}

TEST_F(spawn_test, a_worker_that_ends_without_a_result_is_a_process_error) {
  ends_without_result(
      coproc::async_call(spawn_options("spawned-abort"), end_without_result, SIGABRT),
      exit_status::signaled(SIGABRT), "SIGABRT");
  ends_without_result(coproc::async_call(spawn_options(), end_without_result, -3),
                      exit_status::exited(3), "exit code 3");
}

TEST_F(spawn_test, a_process_runs_a_registered_function) {
  temp_dir dir;
  const std::string path = (dir / "marker").string();
  process p(ex(), {.name = "spawned", .method = start_method::spawn}, write_marker, path,
            std::string("from a spawned process"));
  p.start();
  EXPECT_GT(p.pid(), 0);
  EXPECT_NE(p.pid(), ::getpid());
  EXPECT_EQ(p.join(), exit_status::exited(0));
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(read_file(path), "from a spawned process");

  // One that throws exits with code 1 (and reports the exception on its stderr).
  process q(ex(), {.name = "spawned-thrower", .method = start_method::spawn}, fail_with,
            std::string("expected failure (printed by a test)"));
  q.start();
  EXPECT_EQ(q.join(), exit_status::exited(1));
  EXPECT_EQ(q.exitcode(), 1);
}

TEST_F(spawn_test, what_cannot_be_spawned_is_an_invalid_argument) {
  const auto reason = [](process& p) -> std::string {
    try {
      p.start();
      ADD_FAILURE() << "started";
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return {};
  };
  const coproc::process_options spawn{.name = "unspawnable", .method = start_method::spawn};
  process unregistered(ex(), spawn, not_registered, 1);
  std::string why = reason(unregistered);
  EXPECT_NE(why.find("not registered"), std::string::npos) << why;
  EXPECT_NE(why.find("COPROC_REGISTER"), std::string::npos) << why;
  EXPECT_NE(why.find("unspawnable"), std::string::npos) << why;
  EXPECT_EQ(unregistered.pid(), -1);
  EXPECT_FALSE(unregistered.is_alive());

  process lambda(ex(), spawn, [] {});
  why = reason(lambda);
  EXPECT_NE(why.find("only registered functions"), std::string::npos) << why;

  process object(ex(), spawn, reporter{nullptr, ""});
  why = reason(object);
  EXPECT_NE(why.find("run() member"), std::string::npos) << why;

  process pointer_argument(ex(), spawn, send_sum, static_cast<coproc::connection*>(nullptr), 1, 2);
  why = reason(pointer_argument);
  EXPECT_NE(why.find("not encodable"), std::string::npos) << why;

  auto call =
      fails_with<std::invalid_argument>(coproc::async_call(spawn_options(), not_registered, 1));
  ASSERT_TRUE(call);
  EXPECT_NE(std::string(call->what()).find("not registered"), std::string::npos) << call->what();
  auto call_lambda =
      fails_with<std::invalid_argument>(coproc::async_call(spawn_options(), [] { return 1; }));
  ASSERT_TRUE(call_lambda);
  EXPECT_NE(std::string(call_lambda->what()).find("only registered functions"), std::string::npos)
      << call_lambda->what();
  EXPECT_EQ(leftover_children(), "") << "no child was started";
}

TEST_F(spawn_test, concurrent_calls_on_an_io_context_run_by_two_threads) {
  auto [a, b, c, d] = run(  // on a strand: see calls_on_an_io_context_run_by_two_threads
      on_strand([]() -> asio::awaitable<std::tuple<int, std::string, int, int>> {
        const auto options = spawn_options();
        int x = 3, y = 81, z = 20;
        std::string s = "xy";
        int n = 2;
        auto first = coproc::async_call(options, square, x);
        auto second = coproc::async_call(options, repeat, s, n);
        auto third = coproc::async_call(options, checked_root, y);
        auto fourth = coproc::async_call(options, square, z);
        co_return co_await (std::move(first) && std::move(second) && std::move(third) &&
                            std::move(fourth));
      }),
      60s, 2);
  EXPECT_EQ(a, 9);
  EXPECT_EQ(b, "xyxy");
  EXPECT_EQ(c, 9);
  EXPECT_EQ(d, 400);
}

}  // namespace

int main(int argc, char** argv) {
  coproc::worker_hook(argc, argv);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
