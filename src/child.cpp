#include <coproc/child.hpp>

#include <coproc/error.hpp>

#include "child_state.hpp"
#include "launch.hpp"
#include "reaper.hpp"

#include <boost/asio/compose.hpp>
#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <vector>

extern char** environ;

namespace coproc {
namespace detail {
namespace {

error_code errno_code(int e) { return {e, boost::system::system_category()}; }

// A descriptor owned only during spawn.
struct owned_fd {
  int fd = -1;
  owned_fd() = default;
  explicit owned_fd(int f) : fd(f) {}
  owned_fd(owned_fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
  owned_fd& operator=(owned_fd&& o) noexcept {
    reset();
    fd = std::exchange(o.fd, -1);
    return *this;
  }
  ~owned_fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  int release() { return std::exchange(fd, -1); }
};

struct pipe_pair {
  owned_fd read, write;
};

bool make_pipe(pipe_pair& p, int& error) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    error = errno;
    return false;
  }
  p.read = owned_fd(fds[0]);
  p.write = owned_fd(fds[1]);
  return true;
}

// The child's environment: nullptr means "the parent's, unchanged".
struct environment {
  std::vector<std::string> storage;
  std::vector<char*> pointers;

  const char* find(std::string_view key) const {
    for (const auto& kv : storage)
      if (kv.size() > key.size() && kv[key.size()] == '=' && kv.compare(0, key.size(), key) == 0)
        return kv.c_str() + key.size() + 1;
    return nullptr;
  }
};

bool build_environment(const command& cmd, environment& env) {
  if (cmd.inherits_env() && cmd.env_changes().empty()) return false;
  if (cmd.inherits_env())
    for (char** e = environ; e && *e; ++e) env.storage.emplace_back(*e);
  for (const auto& [key, value] : cmd.env_changes()) {
    std::erase_if(env.storage, [&](const std::string& kv) {
      return kv.size() > key.size() && kv[key.size()] == '=' && kv.compare(0, key.size(), key) == 0;
    });
    if (value) env.storage.push_back(key + "=" + *value);
  }
  for (auto& kv : env.storage) env.pointers.push_back(kv.data());
  env.pointers.push_back(nullptr);
  return true;
}

// execvp's search, done in the parent so the error can say what was wrong.
std::string resolve_program(const std::string& program, const char* path_var, int& error,
                            std::string& detail) {
  if (program.empty()) {
    error = ENOENT;
    detail = "empty program name";
    return {};
  }
  if (program.find('/') != std::string::npos) return program;
  std::string_view path = path_var ? path_var : "/usr/local/bin:/bin:/usr/bin";
  bool saw_eacces = false;
  std::string candidate;
  for (;;) {
    auto colon = path.find(':');
    std::string_view dir = path.substr(0, colon);
    candidate.assign(dir.empty() ? "." : dir);
    candidate += '/';
    candidate += program;
    struct stat st;
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
      saw_eacces = true;
    }
    if (colon == std::string_view::npos) break;
    path.remove_prefix(colon + 1);
  }
  error = saw_eacces ? EACCES : ENOENT;
  detail = saw_eacces ? "found in PATH but not executable" : "not found in PATH";
  return {};
}

std::string spawn_message(const std::string& program, const std::string& detail, int error) {
  std::string m = "spawn \"" + program + "\": " + std::strerror(error);
  if (!detail.empty()) m += " (" + detail + ")";
  return m;
}

// Opens a file or /dev/null for one of the child's standard streams.
bool open_for(const stdio& s, int child_fd, owned_fd& out, int& error, std::string& detail) {
  const bool input = child_fd == 0;
  int flags = O_CLOEXEC | (input ? O_RDONLY : O_WRONLY);
  std::string path = "/dev/null";
  if (s.type() == stdio::kind::file) {
    path = s.path().string();
    if (!input) flags |= O_CREAT | (s.append() ? O_APPEND : O_TRUNC);
  }
  int fd = ::open(path.c_str(), flags, 0666);
  if (fd < 0) {
    error = errno;
    detail = "cannot open \"" + path + "\" for " +
             (input           ? "stdin"
              : child_fd == 1 ? "stdout"
                              : "stderr");
    return false;
  }
  out = owned_fd(fd);
  return true;
}

// Writes `data` to the child's stdin pipe, then closes it. The writer belongs to the child, so
// destroying the child (or the run that owns it) stops the feed.
void start_feed(const std::shared_ptr<child_state>& st, int fd, std::string data) {
  st->feed = pipe_writer(st->pidfd.get_executor(), fd);
  if (data.empty()) return st->feed.close();
  auto bytes = std::make_shared<std::string>(std::move(data));
  std::weak_ptr<child_state> weak = st;
  st->feed.async_write(asio::buffer(*bytes), [weak, bytes](error_code, std::size_t) {
    if (auto s = weak.lock()) s->feed.close();
  });
}

}  // namespace

void grow_pipe(int fd, std::size_t size) {
  if (size == 0) return;
  // Best effort: the kernel caps unprivileged sizes at /proc/sys/fs/pipe-max-size.
  (void)fcntl(fd, F_SETPIPE_SZ, static_cast<int>(std::min<std::size_t>(size, 1u << 30)));
}

bool child_state::poll_exit(error_code& ec) {
  if (status) return true;
  if (!pidfd.is_open()) return false;
  int word, error;
  if (try_reap(pidfd.native_handle(), word, error)) {
    status = exit_status::from_wait_status(word);
    reaper::of(pidfd.get_executor()).poll_detached();
    pidfd.close(ec);  // frees the descriptor early; pending waits see `status`
    ec = {};
    return true;
  }
  if (error) {
    ec = errno_code(error);
    if (error == ECHILD) {
      // Someone else reaped it (SIGCHLD set to SIG_IGN, or a waitpid(-1) elsewhere): the
      // process is gone and its status is lost.
      lost = true;
      error_code ignored;
      pidfd.close(ignored);
    }
  }
  return false;
}

void child_state::signal(int sig, error_code& ec) {
  if (status || !pidfd.is_open()) return;
  if (syscall(SYS_pidfd_send_signal, pidfd.native_handle(), sig, nullptr, 0) != 0 && errno != ESRCH)
    ec = errno_code(errno);
}

namespace {
// Every descendant of `pid` listed under /proc, depth first.
void collect_descendants(int pid, std::vector<int>& out) {
  std::error_code fs_ec;
  std::filesystem::directory_iterator it("/proc/" + std::to_string(pid) + "/task", fs_ec), end;
  for (; !fs_ec && it != end; it.increment(fs_ec)) {
    std::ifstream f(it->path() / "children");
    int c;
    while (f >> c) {
      if (std::find(out.begin(), out.end(), c) != out.end()) continue;
      out.push_back(c);
      collect_descendants(c, out);
    }
  }
}
}  // namespace

void child_state::signal_tree(int sig, error_code& ec) {
  if (pgid > 0) {
    // The group outlives its leader while members remain.
    if (::kill(-pgid, sig) != 0 && errno != ESRCH) ec = errno_code(errno);
    return;
  }
  // Descendants found earlier are remembered, so a later signal (the ladder's SIGKILL)
  // still reaches those re-parented after the child died.
  if (!status && !lost) {
    std::vector<int> tree;
    collect_descendants(pid, tree);
    for (int p : tree)
      if (std::find(descendants.begin(), descendants.end(), p) == descendants.end())
        descendants.push_back(p);
    signal(sig, ec);
  }
  for (int p : descendants) ::kill(p, sig);
}

}  // namespace detail

// --- spawn ---------------------------------------------------------------------------

namespace detail {

// Builds everything the launch needs in the parent, launches, and wraps the result. Never
// throws for system errors: they are returned in `ec` with a message in `what`.
struct spawner {
  static child adopt(const executor_type& ex, int pid, int pidfd, std::string name) {
    owned_fd guard(pidfd);
    auto st = std::make_shared<child_state>(ex);
    st->program = std::move(name);
    st->pid = pid;
    reaper::of(ex).poll_detached();
    st->pidfd.assign(pidfd);
    guard.release();
    return child(std::move(st));
  }
  static int pidfd_of(child& c) {
    return c.s_ && c.s_->pidfd.is_open() ? c.s_->pidfd.native_handle() : -1;
  }
  static child run(const executor_type& ex, const command& cmd, error_code& ec, std::string& what,
                   int join_group = 0) {
    ec = {};
    int error = 0;
    std::string note;
    auto failed = [&](int e, const std::string& subject, const std::string& n) {
      ec = errno_code(e);
      what = spawn_message(subject, n, e);
      return child(nullptr);
    };

    environment env;
    const bool own_env = build_environment(cmd, env);
    const char* path_var = own_env ? env.find("PATH") : ::getenv("PATH");
    std::string exe = resolve_program(cmd.program(), path_var, error, note);
    if (exe.empty()) return failed(error, cmd.program(), note);

    std::vector<fd_mapping> fds;
    owned_fd child_ends[3], parent_ends[3];
    const stdio inherit = stdio::inherit();
    const stdio* conf[3] = {cmd.std_in_config() ? &*cmd.std_in_config() : &inherit,
                            cmd.std_out_config() ? &*cmd.std_out_config() : &inherit,
                            cmd.std_err_config() ? &*cmd.std_err_config() : &inherit};
    for (int i = 0; i < 3; ++i) {
      const stdio& s = *conf[i];
      switch (s.type()) {
        case stdio::kind::inherit: break;
        case stdio::kind::null:
        case stdio::kind::file:
          if (!open_for(s, i, child_ends[i], error, note))
            return failed(error, cmd.program(), note);
          fds.push_back({i, child_ends[i].fd});
          break;
        case stdio::kind::fd: fds.push_back({i, s.descriptor()}); break;
        case stdio::kind::pipe:
        case stdio::kind::bytes: {
          pipe_pair p;
          if (!make_pipe(p, error)) return failed(error, cmd.program(), "creating a pipe");
          if (i == 0) {
            child_ends[0] = std::move(p.read);
            parent_ends[0] = std::move(p.write);
          } else {
            grow_pipe(p.read.fd, cmd.limits().pipe_size);
            child_ends[i] = std::move(p.write);
            parent_ends[i] = std::move(p.read);
          }
          fds.push_back({i, child_ends[i].fd});
          break;
        }
        case stdio::kind::to_stdout:
          // stderr follows stdout, wherever that goes (inherited stdout: descriptor 1).
          if (i == 2)
            fds.push_back({2, !fds.empty() && fds.back().child_fd == 1 ? fds.back().parent_fd : 1});
          break;
      }
    }
    for (auto [child_fd, parent_fd] : cmd.extra_fds()) {
      if (child_fd < 3 || parent_fd < 0)
        return failed(EBADF, cmd.program(),
                      "pass_fd(" + std::to_string(child_fd) + ", " + std::to_string(parent_fd) +
                          "): the child descriptor must be >= 3");
      fds.push_back({child_fd, parent_fd});
    }
    std::sort(fds.begin(), fds.end(),
              [](const auto& a, const auto& b) { return a.child_fd < b.child_fd; });
    for (std::size_t i = 1; i < fds.size(); ++i)
      if (fds[i].child_fd == fds[i - 1].child_fd)
        return failed(EINVAL, cmd.program(),
                      "descriptor " + std::to_string(fds[i].child_fd) + " is passed twice");

    std::vector<char*> argv;
    argv.reserve(cmd.arguments().size() + 2);
    std::string arg0 = cmd.argv0() ? *cmd.argv0() : cmd.program();
    argv.push_back(arg0.data());
    for (const auto& a : cmd.arguments()) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const std::string cwd =
        cmd.working_directory() ? cmd.working_directory()->string() : std::string{};

    launch_request req;
    req.path = exe.c_str();
    req.argv = argv.data();
    req.envp = own_env ? env.pointers.data() : environ;
    req.cwd = cmd.working_directory() ? cwd.c_str() : nullptr;
    req.fds = fds.data();
    req.nfds = static_cast<int>(fds.size());
    req.new_group = cmd.process_group() && !cmd.session() && join_group == 0;
    req.join_group = join_group;
    req.new_session = cmd.session();
    req.die_with_parent = cmd.dies_with_parent();
    req.nofile = raise_nofile_limit();

    const launch_result r = launch(req);
    if (r.pid < 0) {
      if (std::strcmp(r.stage, "chdir") == 0)
        return failed(r.error, cmd.program(), "working directory \"" + cwd + "\"");
      if (std::strcmp(r.stage, "execve") == 0)
        return failed(r.error, cmd.program(), exe == cmd.program() ? "" : "executing " + exe);
      return failed(r.error, cmd.program(), r.stage);
    }
    for (auto& c : child_ends) c.reset();

    // From here on a process exists: any failure must kill and reap it.
    owned_fd pidfd(r.pidfd);
    std::shared_ptr<child_state> st;
    try {
      st = std::make_shared<child_state>(ex);
      st->program = cmd.program();
      st->pid = r.pid;
      st->pgid = join_group > 0 ? join_group : (req.new_group || req.new_session) ? r.pid : 0;
      reaper::of(ex).poll_detached();  // also creates the reaper before any shutdown
      st->pidfd.assign(pidfd.fd);
      pidfd.release();
      if (parent_ends[0].fd >= 0) {
        if (conf[0]->type() == stdio::kind::bytes)
          start_feed(st, parent_ends[0].release(), conf[0]->data());
        else
          st->in = pipe_writer(ex, parent_ends[0].release());
      }
      if (parent_ends[1].fd >= 0)
        st->out = pipe_reader(ex, parent_ends[1].release(), cmd.limits().max_line);
      if (parent_ends[2].fd >= 0)
        st->err = pipe_reader(ex, parent_ends[2].release(), cmd.limits().max_line);
      return child(std::move(st));
    } catch (const std::exception& e) {
      const int fd = pidfd.fd >= 0               ? pidfd.fd
                     : st && st->pidfd.is_open() ? st->pidfd.native_handle()
                                                 : -1;
      syscall(SYS_pidfd_send_signal, fd, SIGKILL, nullptr, 0);
      int word, error;
      reap_blocking(fd, word, error);
      const auto* se = dynamic_cast<const boost::system::system_error*>(&e);
      return failed(se ? se->code().value() : ENOMEM, cmd.program(), e.what());
    }
  }
};

child adopt_process(const executor_type& ex, int pid, int pidfd, std::string name) {
  return spawner::adopt(ex, pid, pidfd, std::move(name));
}
int pidfd_of(child& c) { return spawner::pidfd_of(c); }

child spawn_in_group(const executor_type& ex, const command& cmd, int pgid, error_code& ec,
                     std::string& what) {
  return spawner::run(ex, cmd, ec, what, pgid);
}

}  // namespace detail

child spawn(const executor_type& ex, const command& cmd, error_code& ec) {
  std::string what;
  return detail::spawner::run(ex, cmd, ec, what);
}

child spawn(const executor_type& ex, const command& cmd) {
  error_code ec;
  std::string what;
  child c = detail::spawner::run(ex, cmd, ec, what);
  if (ec) throw spawn_error(ec, cmd.program(), what);
  return c;
}

// --- child ---------------------------------------------------------------------------

child::child(std::shared_ptr<detail::child_state> s) noexcept : s_(std::move(s)) {}
child::child(child&&) noexcept = default;
child& child::operator=(child&& other) noexcept {
  if (this != &other) {
    child doomed(std::move(*this));
    s_ = std::move(other.s_);
  }
  return *this;
}

child::~child() {
  if (!s_ || s_->pid < 0) return;
  error_code ec;
  if (s_->detached || s_->poll_exit(ec) || !s_->pidfd.is_open()) return;
  if (s_->pgid > 0)
    s_->signal_tree(SIGKILL, ec);
  else
    s_->signal(SIGKILL, ec);
  // release() completes pending waits with operation_aborted and hands over the pidfd.
  const int fd = s_->pidfd.release();
  try {
    detail::reaper::of(s_->executor()).adopt(s_->executor(), fd, true);
  } catch (...) {
    int word, error;  // no memory to watch it: it was sent SIGKILL, so this is short
    detail::reap_blocking(fd, word, error);
    ::close(fd);
  }
}

child::executor_type child::get_executor() const noexcept { return s_->executor(); }
int child::pid() const noexcept { return s_ ? s_->pid : -1; }
const std::string& child::program() const noexcept { return s_->program; }
bool child::leads_group() const noexcept { return s_ && s_->pgid == s_->pid; }
pipe_writer& child::std_in() noexcept { return s_->in; }
pipe_reader& child::std_out() noexcept { return s_->out; }
pipe_reader& child::std_err() noexcept { return s_->err; }
std::optional<exit_status> child::status() const noexcept { return s_ ? s_->status : std::nullopt; }
bool child::running() const noexcept { return s_ && !s_->status && !s_->detached && !s_->lost; }

namespace {
struct wait_op {
  std::shared_ptr<detail::child_state> st;
  bool waited = false;  // false while still inside the initiating function
  bool posted = false;
  error_code result{};

  template <typename Self>
  void operator()(Self& self, error_code ec = {}) {
    if (posted) return self.complete(result, st->status.value_or(exit_status{}));
    if (waited && !ec && self.cancelled() != asio::cancellation_type::none)
      ec = asio::error::operation_aborted;
    if (!st->detached) {
      error_code pec;
      const bool reaped = st->poll_exit(pec);
      if (!reaped && !pec && !ec && st->pidfd.is_open()) {
        // Cancelling a wait only stops waiting: every type is safe.
        if (!waited) self.reset_cancellation_state(asio::enable_total_cancellation());
        waited = true;
        st->pidfd.async_wait(asio::posix::descriptor_base::wait_read, std::move(self));
        return;
      }
      result = pec;
    }
    if (st->status)
      result = {};  // a reaped child's status wins over a late cancellation
    else if (!result)
      result = ec ? ec : make_error_code(errc::not_running);
    if (waited) return self.complete(result, st->status.value_or(exit_status{}));
    posted = true;
    asio::post(self.get_io_executor(), std::move(self));
  }
};
}  // namespace

void child::start_wait(asio::any_completion_handler<void(error_code, exit_status)> h) {
  if (!s_) throw std::logic_error("coproc::child::async_wait on an empty child");
  asio::async_compose<decltype(h), void(error_code, exit_status)>(wait_op{s_}, h, s_->pidfd);
}

exit_status child::wait() {
  if (!s_ || s_->detached)
    throw boost::system::system_error(make_error_code(errc::not_running), "wait");
  if (s_->status) return *s_->status;
  int word, error;
  if (!detail::reap_blocking(s_->pidfd.native_handle(), word, error))
    throw boost::system::system_error(detail::errno_code(error), "wait");
  s_->status = exit_status::from_wait_status(word);
  error_code ignored;
  s_->pidfd.close(ignored);
  return *s_->status;
}

std::optional<exit_status> child::try_wait() {
  if (!s_ || s_->detached) return std::nullopt;
  error_code ec;
  s_->poll_exit(ec);
  if (ec) throw boost::system::system_error(ec, "try_wait");
  return s_->status;
}

void child::signal(int sig) {
  if (!s_ || s_->detached) return;
  error_code ec;
  s_->signal(sig, ec);
  if (ec) throw boost::system::system_error(ec, "signal " + signal_name(sig));
}
void child::interrupt() { signal(SIGINT); }
void child::terminate() { signal(SIGTERM); }
void child::kill() { signal(SIGKILL); }

void child::signal_tree(int sig) {
  if (!s_ || s_->detached) return;
  error_code ec;
  s_->signal_tree(sig, ec);
  if (ec) throw boost::system::system_error(ec, "signal_tree " + signal_name(sig));
}

void child::detach() {
  if (!s_ || s_->detached) return;
  s_->detached = true;
  if (!s_->status && s_->pidfd.is_open())
    detail::reaper::of(s_->executor()).adopt(s_->executor(), s_->pidfd.release(), false);
}

}  // namespace coproc
