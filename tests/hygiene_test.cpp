// Process and descriptor hygiene across the library: what a child inherits, what the parent
// keeps, and that nothing accumulates under load.
#include <coproc/child.hpp>

#include <coproc/run.hpp>

#include "fixture.hpp"

#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace {

using namespace coproc_test;
using coproc::child;
using coproc::exit_status;
using coproc::stdio;

class hygiene_test : public io_test {
 protected:
  /// The descriptors the helper sees, with stdin/stderr at /dev/null and stdout a pipe.
  std::vector<std::string> child_fds(coproc::command c) {
    auto r = run(coproc::async_run(
        std::move(c).std_in(stdio::null()).std_err(stdio::null()).std_out(stdio::pipe())));
    EXPECT_TRUE(r.success()) << r.status.to_string();
    return split_lines(r.out);
  }
};

/// Descriptors opened without O_CLOEXEC, as careless code elsewhere in a process would.
struct planted_fds {
  std::vector<int> fds;
  planted_fds() {
    fds.push_back(::open("/dev/null", O_RDONLY));  // no O_CLOEXEC
    fds.push_back(::dup(fds[0]));
    int p[2];
    if (::pipe(p) == 0) fds.insert(fds.end(), {p[0], p[1]});
    // One far up, where a child that closes "the first thousand" would miss it.
    const int high = static_cast<int>(std::min<std::size_t>(raise_fd_limit(70000) - 1, 65000));
    if (high > 100 && ::dup2(fds[0], high) == high) fds.push_back(high);
  }
  ~planted_fds() {
    for (int fd : fds) ::close(fd);
  }
};

TEST_F(hygiene_test, child_sees_only_its_stdio_even_when_the_parent_leaks_descriptors) {
  planted_fds planted;
  ASSERT_GE(planted.fds.size(), 4u);
  for (int fd : planted.fds) ASSERT_EQ(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_EQ(child_fds(helper("fds")), (std::vector<std::string>{"0", "1", "2"}));
}

TEST_F(hygiene_test, child_sees_stdio_plus_exactly_the_passed_descriptor) {
  planted_fds planted;
  temp_dir dir;
  int passed = ::open((dir / "passed").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(passed, 0);
  EXPECT_EQ(child_fds(helper("fds").pass_fd(5, passed)),
            (std::vector<std::string>{"0", "1", "2", "5"}));
  EXPECT_EQ(child_fds(helper("fdlink", "5").pass_fd(5, passed)),
            (std::vector<std::string>{std::filesystem::canonical(dir / "passed").string()}));
  ::close(passed);
}

TEST_F(hygiene_test, passed_descriptors_that_swap_numbers_arrive_intact) {
  temp_dir dir;
  int a = ::open((dir / "a").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  int b = ::open((dir / "b").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  // Put them at 40 and 41 and ask for them the other way round: a naive dup2 sequence
  // overwrites one with the other.
  ASSERT_EQ(::dup3(a, 40, O_CLOEXEC), 40);
  ASSERT_EQ(::dup3(b, 41, O_CLOEXEC), 41);
  ::close(a);
  ::close(b);
  auto lines =
      child_fds(helper("fdlink", "40", "fdlink", "41", "fds").pass_fd(40, 41).pass_fd(41, 40));
  const auto pa = std::filesystem::canonical(dir / "a").string();
  const auto pb = std::filesystem::canonical(dir / "b").string();
  EXPECT_EQ(lines, (std::vector<std::string>{pb, pa, "0", "1", "2", "40", "41"}));
  ::close(40);
  ::close(41);
}

TEST_F(hygiene_test, a_descriptor_passed_under_its_own_number_stays_open) {
  temp_dir dir;
  int fd = ::open((dir / "same").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  // dup2(fd, fd) keeps FD_CLOEXEC: the launcher must clear it explicitly.
  auto lines = child_fds(helper("fds").pass_fd(fd, fd));
  EXPECT_EQ(lines, (std::vector<std::string>{"0", "1", "2", std::to_string(fd)}));
  ::close(fd);
}

/// Closes this process's descriptors 0, 1 and 2 until destroyed (as a daemon or a CI job
/// without standard input has them), so the library's own pipes take those numbers.
class closed_stdio {
 public:
  closed_stdio() {
    for (int fd = 0; fd < 3; ++fd) {
      saved_[fd] = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
      ::close(fd);
    }
  }
  ~closed_stdio() { restore(); }
  void restore() {
    for (int fd = 0; fd < 3; ++fd) {
      if (saved_[fd] >= 0) {
        ::dup2(saved_[fd], fd);
        ::close(saved_[fd]);
      } else {
        ::close(fd);
      }
      saved_[fd] = -1;
    }
  }

 private:
  int saved_[3] = {-1, -1, -1};
};

TEST_F(hygiene_test, works_when_the_parents_stdio_descriptors_are_closed) {
  coproc::completed echo, fds;
  std::string error;
  {
    closed_stdio closed;
    try {
      echo = run(coproc::async_run(helper("echo", "errline", "to err").input("through")));
      fds = run(coproc::async_run(helper("fds")));
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  EXPECT_EQ(error, "");
  EXPECT_EQ(echo.out, "through");
  EXPECT_EQ(echo.err, "to err\n");
  EXPECT_TRUE(echo.success()) << echo.status.to_string();
  EXPECT_EQ(split_lines(fds.out), (std::vector<std::string>{"0", "1", "2"}));
}

TEST_F(hygiene_test, every_descriptor_the_library_opens_is_cloexec) {
  auto before = open_fds();
  child c = coproc::spawn(
      ex(),
      helper("wait-stdin").std_in(stdio::pipe()).std_out(stdio::pipe()).std_err(stdio::pipe()));
  auto during = open_fds();
  int checked = 0;
  for (const auto& [fd, what] : during) {
    if (before.count(fd)) continue;
    ++checked;
    EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0) << "fd " << fd << " -> " << what;
  }
  EXPECT_GE(checked, 3) << "the three pipes at least";
  c.std_in().close();
  EXPECT_TRUE(run(c.async_wait()).success());
}

TEST_F(hygiene_test, no_sigchld_handler_is_installed) {
  auto r = run(coproc::async_run(helper("exit", "0")));
  child c = coproc::spawn(ex(), helper("exit", "0"));
  run(c.async_wait());
  EXPECT_TRUE(r.success());
  struct sigaction sa {};
  ASSERT_EQ(::sigaction(SIGCHLD, nullptr, &sa), 0);
  EXPECT_EQ(sa.sa_handler, SIG_DFL);
}

TEST_F(hygiene_test, children_start_with_default_sigpipe_and_no_blocked_signals) {
  // Even when this process ignores SIGPIPE and this thread blocks a signal.
  struct sigaction ignore {
  }, old{};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &old);
  sigset_t usr1, old_mask;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  ::pthread_sigmask(SIG_BLOCK, &usr1, &old_mask);
  auto r = run(coproc::async_run(helper("sigstate")));
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ::sigaction(SIGPIPE, &old, nullptr);
  EXPECT_EQ(r.out, "SIGPIPE default\nblocked none\n");
}

TEST_F(hygiene_test, a_thousand_concurrent_children) {
  const int n = 1000;
  raise_fd_limit(4 * n + 100);
  // Every child blocks reading one shared pipe until this process closes its write end.
  raw_pipe gate;
  std::vector<child> children;
  children.reserve(n);
  for (int i = 0; i < n; ++i)
    children.push_back(coproc::spawn(ex(), helper("wait-stdin", "exit", std::to_string(i % 7))
                                               .std_in(stdio::fd(gate.read_end()))
                                               .std_out(stdio::null())
                                               .std_err(stdio::null())));
  int alive = 0;
  for (auto& c : children) alive += c.running() && !c.try_wait();
  EXPECT_EQ(alive, n) << "all of them wait at the gate";
  gate.close_write();
  gate.close_read();
  auto statuses = run(
      [&]() -> asio::awaitable<std::vector<exit_status>> {
        std::vector<exit_status> all;
        for (auto& c : children) all.push_back(co_await c.async_wait());
        co_return all;
      }(),
      120s);
  ASSERT_EQ(statuses.size(), std::size_t(n));
  for (int i = 0; i < n; ++i) EXPECT_EQ(statuses[i], exit_status::exited(i % 7)) << "child " << i;
}

TEST_F(hygiene_test, many_runs_in_a_row_leave_no_descriptor_behind) {
  const int n = sanitized ? 2000 : 10000;
  auto [fds_early, fds_late, failures] = run(
      [&]() -> asio::awaitable<std::tuple<std::size_t, std::size_t, int>> {
        std::size_t early = 0;
        int failures = 0;
        for (int i = 0; i < n; ++i) {
          auto r = co_await coproc::async_run(helper("exit", "0"));
          failures += !r.success();
          if (i == 99) early = open_fds().size();
        }
        co_return std::tuple{early, open_fds().size(), failures};
      }(),
      300s);
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(fds_late, fds_early) << "descriptors grew over " << n << " runs";
}

TEST_F(hygiene_test, children_destroyed_at_once_are_all_reaped) {
  std::vector<int> pids;
  {
    std::vector<child> children;
    for (int i = 0; i < 300; ++i) {
      children.push_back(coproc::spawn(ex(), helper("sleep-forever").std_out(stdio::null())));
      pids.push_back(children.back().pid());
    }
  }
  EXPECT_TRUE(run_until(
      [&] { return std::all_of(pids.begin(), pids.end(), [](int p) { return reaped(p); }); }, 60s));
}

TEST_F(hygiene_test, spawning_from_several_threads_at_once) {
  constexpr int threads = 4, per_thread = sanitized ? 25 : 100;
  std::atomic<int> ok{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        try {
          child c = coproc::spawn(
              ex(), helper("outline", std::to_string(t * 1000 + i), "exit", std::to_string(t))
                        .std_out(stdio::null()));
          ok += c.wait() == exit_status::exited(t);
        } catch (const std::exception& e) {
          ADD_FAILURE() << e.what();
        }
      }
    });
  for (auto& th : pool) th.join();
  EXPECT_EQ(ok.load(), threads * per_thread);
}

}  // namespace
