#include "fixture.hpp"

#include <coproc/run.hpp>

#include <boost/asio/executor_work_guard.hpp>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

namespace coproc_test {

std::map<int, std::string> open_fds() {
  std::map<int, std::string> fds;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return fds;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    int fd = std::atoi(e->d_name);
    if (fd == ::dirfd(d)) continue;
    char buf[PATH_MAX];
    std::string path = std::string("/proc/self/fd/") + e->d_name;
    ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
    fds[fd] = n < 0 ? std::string("?") : std::string(buf, static_cast<std::size_t>(n));
  }
  ::closedir(d);
  return fds;
}

std::map<int, std::string> child_processes() {
  std::map<int, std::string> kids;
  const int self = ::getpid();
  DIR* d = ::opendir("/proc");
  if (!d) return kids;
  while (dirent* e = ::readdir(d)) {
    int pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::ifstream f(std::string("/proc/") + e->d_name + "/stat");
    std::string stat;
    if (!std::getline(f, stat)) continue;
    // pid (comm) state ppid ...; comm may hold spaces and parentheses.
    auto close = stat.rfind(')');
    auto open = stat.find('(');
    if (close == std::string::npos || open == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 1));
    std::string state;
    int ppid = 0;
    rest >> state >> ppid;
    if (ppid == self) kids[pid] = stat.substr(open + 1, close - open - 1) + " " + state;
  }
  ::closedir(d);
  return kids;
}

std::string leftover_children() {
  siginfo_t info{};
  if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    if (errno == ECHILD) return {};
    return std::string("waitid: ") + std::strerror(errno);
  }
  std::string s = info.si_pid != 0
                      ? "an unreaped (zombie) child: pid " + std::to_string(info.si_pid)
                      : std::string("a child still running");
  for (const auto& [pid, what] : child_processes())
    s += "\n  child " + std::to_string(pid) + " " + what;
  return s;
}

std::vector<std::string> split_lines(std::string_view s) {
  std::vector<std::string> lines;
  while (!s.empty()) {
    auto nl = s.find('\n');
    if (nl == std::string_view::npos) {
      lines.emplace_back(s);
      break;
    }
    lines.emplace_back(s.substr(0, nl));
    s.remove_prefix(nl + 1);
  }
  return lines;
}

std::size_t raise_fd_limit(std::size_t n) {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < n) {
    rl.rlim_cur = std::min<rlim_t>(n, rl.rlim_max);
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur;
}

temp_dir::temp_dir() {
  const char* base = std::getenv("TMPDIR");
  std::string templ = std::string(base && *base ? base : "/tmp") + "/coproc-test-XXXXXX";
  if (!::mkdtemp(templ.data()))
    throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
  path_ = templ;
}

temp_dir::~temp_dir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

void write_file(const std::filesystem::path& p, std::string_view data) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

raw_pipe::raw_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
  r_ = fds[0];
  w_ = fds[1];
}

raw_pipe::~raw_pipe() {
  close_read();
  close_write();
}

void raw_pipe::close_read() {
  if (r_ >= 0) ::close(r_);
  r_ = -1;
}

void raw_pipe::close_write() {
  if (w_ >= 0) ::close(w_);
  w_ = -1;
}

coproc::pipe_reader raw_pipe::reader(const coproc::executor_type& ex) {
  int fd = r_;
  r_ = -1;
  return coproc::pipe_reader(ex, fd);
}

void kill_quietly(int pid) {
  if (pid > 0) ::kill(pid, SIGKILL);
}

bool wait_exited_no_reap(int pid) {
  siginfo_t info{};
  for (;;) {
    if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) == 0) return true;
    if (errno == EINTR) continue;
    return errno == ECHILD;  // already reaped: it did exit
  }
}

bool exited_unreaped(int pid) {
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
         info.si_pid == pid;
}

bool reaped(int pid) {
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 &&
         errno == ECHILD;
}

// --- io_test -------------------------------------------------------------------------------

io_test::io_test() { ctx_.emplace(); }

io_test::~io_test() = default;

void io_test::SetUp() {
  // Let the library create whatever it keeps for the process's lifetime before the
  // baseline is taken: the check is for growth, test by test.
  static const bool warmed_up = [] {
    try {
      coproc::run(helper("exit", "0"));
    } catch (...) {
    }
    return true;
  }();
  (void)warmed_up;
  ASSERT_TRUE(leftover_children().empty())
      << "a child existed before the test: " << leftover_children();
  fds_before_ = open_fds();
}

void io_test::TearDown() {
  // Let pending work (reapers of destroyed children) finish, then destroy the context: its
  // shutdown reaps what is left.
  ctx_->restart();
  ctx_->run_for(std::chrono::seconds(10));
  ctx_.reset();

  if (auto left = leftover_children(); !left.empty()) {
    ADD_FAILURE() << "no child process may be left after a test, found " << left;
    for (const auto& [pid, what] : child_processes()) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  if (!skip_fd_check_) {
    auto after = open_fds();
    std::string leaked;
    for (const auto& [fd, what] : after) {
      auto it = fds_before_.find(fd);
      if (it == fds_before_.end() || it->second != what)
        leaked += "\n  fd " + std::to_string(fd) + " -> " + what;
    }
    EXPECT_TRUE(leaked.empty()) << "descriptors leaked by the test:" << leaked;
  }
  ctx_.emplace();
}

void io_test::drive(std::shared_ptr<run_state> stp, std::chrono::steady_clock::duration deadline,
                    int threads) {
  run_state& st = *stp;
  using clock = std::chrono::steady_clock;
  const auto until = clock::now() + deadline;
  ctx().restart();
  // Several threads need a guard so they do not return early; one thread runs without, so a
  // lost handler shows as "out of work" at once.
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard;
  if (threads > 1) guard.emplace(ctx().get_executor());
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back([this] { ctx().run(); });

  bool out_of_work = false;
  while (!st.done && clock::now() < until) {
    // Short slices: with several threads the completion may run on another one.
    auto slice = std::min(until, clock::now() + std::chrono::milliseconds(threads > 1 ? 20 : 500));
    if (ctx().run_one_until(slice) == 0 && ctx().stopped()) {
      out_of_work = true;
      break;
    }
  }
  if (!st.done) {
    ADD_FAILURE() << (out_of_work ? "the io_context stopped before the coroutine completed"
                                  : "deadline passed: the coroutine hung; cancelling it");
    asio::post(ctx(), [stp] { stp->cancel.emit(asio::cancellation_type::all); });
    const auto grace = clock::now() + std::chrono::seconds(10);
    while (!st.done && clock::now() < grace) {
      if (ctx().run_one_until(std::min(grace, clock::now() + std::chrono::milliseconds(20))) == 0 &&
          ctx().stopped())
        break;
    }
  }
  if (guard) guard->reset();
  if (!pool.empty()) {
    ctx().stop();
    for (auto& t : pool) t.join();
  }
  ctx().restart();
}

}  // namespace coproc_test
