#include <coproc/process.hpp>

#include <coproc/error.hpp>

#include "child_state.hpp"
#include "pool_worker.hpp"
#include "process_internal.hpp"

#include <boost/asio/compose.hpp>
#include <boost/asio/post.hpp>

#include <cxxabi.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <vector>

namespace coproc {
namespace detail {

namespace {

struct function_registry {
  std::mutex mutex;
  std::vector<registered_function> functions;
  static function_registry& get() {
    static function_registry r;
    return r;
  }
};

constexpr const char* worker_env = "COPROC_WORKER_FD";

error_code errno_code(int e) { return {e, boost::system::system_category()}; }

std::string demangled_type(const std::exception& e) {
  int status = 0;
  char* p = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status);
  std::string s = status == 0 && p ? p : typeid(e).name();
  std::free(p);
  return s;
}

}  // namespace

// Blocking write of a whole buffer on a socket, without SIGPIPE.
bool write_all(int fd, const char* data, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd p{fd, POLLOUT, 0};
        ::poll(&p, 1, -1);
        continue;
      }
      return false;
    }
    data += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool read_all(int fd, char* data, std::size_t n) {
  while (n > 0) {
    const ssize_t r = ::read(fd, data, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd p{fd, POLLIN, 0};
        ::poll(&p, 1, -1);
        continue;
      }
      return false;
    }
    if (r == 0) return false;
    data += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

// Fills in the size of a result frame; one beyond the frame format's limit becomes an
// exception frame saying so.
void fill_header(std::string& frame) {
  if (frame.size() - 8 > 0xffffffffu) {
    const std::string what = "coproc: a result of " + std::to_string(frame.size() - 8) +
                             " bytes exceeds the 4 GiB - 1 limit of a message";
    frame = connection::make_frame_buffer(exception_tag);
    encode_to(frame, encode_exception(std::make_exception_ptr(std::length_error(what))));
  }
  const auto size = static_cast<std::uint32_t>(frame.size() - 8);
  std::memcpy(frame.data(), &size, 4);
}

void set_process_name(const std::string& name) {
  ::prctl(PR_SET_NAME, name.substr(0, 15).c_str(), 0, 0, 0);
}

// Prints what escaped a process's callable, as Python prints a child's traceback.
void report_exception(const std::string& name, std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const remote_error& x) {
    std::fprintf(stderr, "process %s: %s: %s\n", name.c_str(), x.type_name().c_str(), x.what());
  } catch (const std::exception& x) {
    std::fprintf(stderr, "process %s: %s: %s\n", name.c_str(), demangled_type(x).c_str(), x.what());
  } catch (...) {
    std::fprintf(stderr, "process %s: unknown exception\n", name.c_str());
  }
}

[[noreturn]] void leave(int code) {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  ::_exit(code);
}

namespace {

// The forked child: runs the callable, sends its result if one is wanted, never returns.
[[noreturn]] void forked_child(launch_request& req, int result_fd, pid_t parent) {
  set_process_name(req.name);
  if (req.daemon || req.want_result) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (::getppid() != parent) ::_exit(1);  // the parent died before the line above
  }
  // Nothing may escape this function: an exception would unwind into the parent's copy of
  // the stack and run its event loop in the child.
  try {
    if (req.want_result) {
      std::string frame = req.run_in_child();
      fill_header(frame);
      leave(write_all(result_fd, frame.data(), frame.size()) ? 0 : 1);
    }
    req.run_in_child();
  } catch (...) {
    report_exception(req.name, std::current_exception());
    leave(1);
  }
  leave(0);
}

void make_socketpair(int sv[2]) {
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    throw spawn_error(errno_code(errno), "socketpair",
                      std::string("cannot create a socketpair: ") + std::strerror(errno));
}

launched fork_callable(const executor_type& ex, launch_request& req) {
  int sv[2] = {-1, -1};
  if (req.want_result) make_socketpair(sv);
  const pid_t parent = ::getpid();
  std::fflush(nullptr);  // buffered output must not be written twice
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int e = errno;
    if (sv[0] >= 0) ::close(sv[0]), ::close(sv[1]);
    throw spawn_error(errno_code(e), req.name,
                      "cannot fork process \"" + req.name + "\": " + std::strerror(e));
  }
  if (pid == 0) {
    if (sv[0] >= 0) ::close(sv[0]);
    forked_child(req, sv[1], parent);
  }
  if (sv[1] >= 0) ::close(sv[1]);
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    const int e = errno;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    if (sv[0] >= 0) ::close(sv[0]);
    throw spawn_error(errno_code(e), req.name, std::string("pidfd_open: ") + std::strerror(e));
  }
  launched l;
  try {
    l.proc = adopt_process(ex, pid, pidfd, req.name);
  } catch (...) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    if (sv[0] >= 0) ::close(sv[0]);
    throw;
  }
  if (sv[0] >= 0) l.channel = connection(ex, sv[0]);
  return l;
}

launched spawn_callable(const executor_type& ex, launch_request& req) {
  if (std::getenv(worker_env))  // worker_hook unsets it: this worker never called it
    throw std::logic_error(
        "coproc: the spawn start method re-executes this program, which must call "
        "coproc::worker_hook(argc, argv) first thing in main (this copy did not)");
  if (req.request.empty())
    throw std::invalid_argument("coproc: process \"" + req.name +
                                "\" cannot use the spawn start method: " + req.why_not_spawnable);
  int sv[2];
  make_socketpair(sv);
  unique_fd parent_end(sv[0]), child_end(sv[1]);
  command cmd{"/proc/self/exe"};
  cmd.env(worker_env, "3").pass_fd(3, child_end.get());
  if (req.daemon || req.want_result) cmd.die_with_parent();
  launched l;
  l.proc = spawn(ex, cmd);
  child_end.reset();
  l.channel = connection(ex, parent_end.release());
  return l;
}

}  // namespace

void register_function(const char* name, any_function address, invoker invoke,
                       task_invoker invoke_task) {
  auto& r = function_registry::get();
  std::lock_guard lock(r.mutex);
  r.functions.push_back({name, address, invoke, invoke_task});
}

const registered_function* find_function(any_function address) {
  auto& r = function_registry::get();
  std::lock_guard lock(r.mutex);
  for (const auto& f : r.functions)
    if (f.address == address) return &f;
  return nullptr;
}

const registered_function* find_function(std::string_view name) {
  auto& r = function_registry::get();
  std::lock_guard lock(r.mutex);
  for (const auto& f : r.functions)
    if (f.name == name) return &f;
  return nullptr;
}

std::string next_process_name() {
  static std::atomic<int> n{0};
  return "process-" + std::to_string(++n);
}

launched launch_callable(const executor_type& ex, launch_request& req) {
  return req.method == start_method::spawn ? spawn_callable(ex, req) : fork_callable(ex, req);
}

namespace {

// async_call's parent side: start the child, (spawn: send the request,) receive the result
// frame, reap the child. Cancellation kills the child and reaps it before completing.
struct call_op {
  enum class stage { start, failed, sending, receiving, waiting, killing };
  executor_type ex;
  launch_request req;
  std::size_t max_result;
  stage at = stage::start;
  std::shared_ptr<launched> l{};
  std::exception_ptr error{};
  frame result{};
  bool have_result = false;

  template <typename Self>
  void operator()(Self& self) {
    if (at == stage::failed) return self.complete(error, frame{});
    try {
      l = std::make_shared<launched>(launch_callable(ex, req));
    } catch (...) {
      error = std::current_exception();
      at = stage::failed;
      return asio::post(self.get_io_executor(), std::move(self));
    }
    l->channel.set_max_message_size(max_result);
    self.reset_cancellation_state(asio::enable_total_cancellation());
    if (req.method == start_method::spawn) {
      at = stage::sending;
      std::string frame = connection::make_frame_buffer(request_tag);
      frame += req.request;
      return l->channel.async_send_frame(std::move(frame), std::move(self));
    }
    receive(self);
  }

  template <typename Self>
  void receive(Self& self) {
    at = stage::receiving;
    l->channel.async_receive_frame(any_tag, std::move(self));
  }

  // After sending the request.
  template <typename Self>
  void operator()(Self& self, error_code ec) {
    if (ec == asio::error::operation_aborted || cancelled(self)) return kill(self);
    receive(self);  // a send error means the child is gone: the receive sees end-of-stream
  }

  // After receiving the result frame (or failing to).
  template <typename Self>
  void operator()(Self& self, error_code ec, frame f) {
    if (ec == asio::error::operation_aborted || cancelled(self)) return kill(self);
    if (!ec) {
      result = std::move(f);
      have_result = true;
    } else if (ec != asio::error::eof) {
      error = std::make_exception_ptr(
          boost::system::system_error(ec, "async_call \"" + req.name + "\": result"));
      l->proc.kill();
    }
    l->channel.close();
    at = stage::waiting;
    l->proc.async_wait(std::move(self));
  }

  // After the child was reaped.
  template <typename Self>
  void operator()(Self& self, error_code ec, exit_status status) {
    if (at == stage::killing)
      return self.complete(error ? error
                                 : std::make_exception_ptr(boost::system::system_error(
                                       asio::error::operation_aborted, "async_call")),
                           frame{});
    if (ec == asio::error::operation_aborted) return kill(self);
    if (ec) return self.complete(std::make_exception_ptr(boost::system::system_error(ec)), frame{});
    if (error) return self.complete(error, frame{});
    if (have_result) return self.complete(nullptr, std::move(result));
    self.complete(std::make_exception_ptr(
                      process_error(req.name, status, {}, "ended without delivering its result")),
                  frame{});
  }

  template <typename Self>
  static bool cancelled(Self& self) {
    return self.cancelled() != asio::cancellation_type::none;
  }

  // Kills the child and waits for the reap, ignoring further cancellation.
  template <typename Self>
  void kill(Self& self) {
    at = stage::killing;
    error_code ignored;
    try {
      l->proc.kill();
    } catch (...) {
    }
    l->channel.close();
    self.reset_cancellation_state(
        [](asio::cancellation_type) { return asio::cancellation_type::none; });
    l->proc.async_wait(std::move(self));
  }
};

}  // namespace

void start_call(const executor_type& ex, launch_request req, std::size_t max_result,
                asio::any_completion_handler<void(std::exception_ptr, frame)> handler) {
  asio::async_compose<decltype(handler), void(std::exception_ptr, frame)>(
      call_op{ex, std::move(req), max_result}, handler, ex);
}

}  // namespace detail

// --- process -----------------------------------------------------------------------------

namespace {
struct not_running_op {
  bool posted = false;
  template <typename Self>
  void operator()(Self& self) {
    if (!posted) {
      posted = true;
      return asio::post(self.get_io_executor(), std::move(self));
    }
    self.complete(make_error_code(errc::not_running), exit_status{});
  }
};
}  // namespace

process::process(process&&) noexcept = default;
process& process::operator=(process&&) noexcept = default;
process::~process() = default;

void process::start() {
  if (started_)
    throw std::logic_error("coproc: process \"" + options_.name + "\" was already started");
  detail::launch_request req;
  req.method = options_.method;
  req.name = options_.name;
  req.daemon = options_.daemon;
  if (options_.method == start_method::fork) {
    req.run_in_child = [run = run_] {
      run();
      return std::string();
    };
  } else if (spawnable_) {
    req.request = spawnable_(options_.name, req.why_not_spawnable);
  } else {
    req.why_not_spawnable =
        "objects with a run() member run with the fork start method only; register a function";
  }
  detail::launched l = detail::launch_callable(ex_, req);
  if (options_.method == start_method::spawn) {
    std::string frame = connection::make_frame_buffer(detail::request_tag);
    frame += req.request;
    error_code ec;
    l.channel.send_frame(frame, ec);  // a failure shows as the worker's exit status
    l.channel.close();
  }
  child_ = std::move(l.proc);
  started_ = true;
}

exit_status process::join() {
  if (!started_) throw boost::system::system_error(make_error_code(errc::not_running), "join");
  return child_.wait();
}

std::optional<exit_status> process::join(std::chrono::milliseconds timeout) {
  if (!started_) throw boost::system::system_error(make_error_code(errc::not_running), "join");
  if (auto s = child_.try_wait()) return s;
  const int fd = detail::pidfd_of(child_);
  if (fd < 0) return child_.status();
  pollfd p{fd, POLLIN, 0};
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    const int r = ::poll(&p, 1, static_cast<int>(std::max<long long>(0, left.count())));
    if (r > 0 || (r == 0 && left.count() <= 0)) break;
    if (r < 0 && errno != EINTR)
      throw boost::system::system_error(detail::errno_code(errno), "join");
  }
  return child_.try_wait();
}

bool process::is_alive() {
  if (!started_) return false;
  return !child_.try_wait() && child_.running();
}

void process::terminate() {
  if (started_ && child_.running()) child_.terminate();
}
void process::kill() {
  if (started_ && child_.running()) child_.kill();
}
void process::detach() {
  if (started_) child_.detach();
}

void process::set_daemon(bool on) {
  if (started_)
    throw std::logic_error("coproc: process \"" + options_.name +
                           "\": the daemon flag is set before start");
  options_.daemon = on;
}

std::optional<int> process::exitcode() const noexcept {
  const auto s = child_.status();
  if (!s) return std::nullopt;
  return s->is_signaled() ? -s->signal() : s->code();
}

void process::start_join(asio::any_completion_handler<void(error_code, exit_status)> h) {
  if (!started_) {
    asio::async_compose<decltype(h), void(error_code, exit_status)>(not_running_op{}, h, ex_);
    return;
  }
  child_.async_wait(std::move(h));
}

// --- the spawn start method's worker -----------------------------------------------------

void worker_hook(int, char**) {
  const char* v = std::getenv(detail::worker_env);
  if (!v) return;
  const int fd = std::atoi(v);
  ::unsetenv(detail::worker_env);
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0) {
    std::fprintf(stderr, "coproc worker: descriptor %d: %s\n", fd, std::strerror(errno));
    ::_exit(1);
  }
  ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  char header[8];
  std::uint32_t size = 0, tag = 0;
  if (!detail::read_all(fd, header, 8)) ::_exit(1);  // the parent went away
  std::memcpy(&size, header, 4);
  std::memcpy(&tag, header + 4, 4);
  if (tag == detail::pool_config_tag) {
    std::string config(size, '\0');
    if (!detail::read_all(fd, config.data(), size)) ::_exit(1);
    detail::run_spawned_pool_worker(fd, config);
  }
  if (tag != detail::request_tag) {
    std::fprintf(stderr, "coproc worker: unexpected message\n");
    ::_exit(1);
  }
  std::string payload(size, '\0');
  if (!detail::read_all(fd, payload.data(), size)) ::_exit(1);
  detail::call_request req;
  std::string frame;
  try {
    req = decode<detail::call_request>(payload);
    detail::set_process_name(req.name);
    const auto* f = detail::find_function(req.function);
    if (!f)
      throw std::runtime_error("coproc: function \"" + req.function +
                               "\" is not registered in the spawned program");
    f->invoke(req.args, frame);
  } catch (...) {
    frame = connection::make_frame_buffer(detail::exception_tag);
    encode_to(frame, encode_exception(std::current_exception()));
  }
  std::uint32_t result_tag;
  std::memcpy(&result_tag, frame.data() + 4, 4);
  if (req.want_result) {
    detail::fill_header(frame);
    detail::leave(detail::write_all(fd, frame.data(), frame.size()) ? 0 : 1);
  }
  if (result_tag == detail::exception_tag) {
    detail::report_exception(
        req.name.empty() ? "worker" : req.name,
        decode_exception(decode<std::string>(std::string_view(frame).substr(8))));
    detail::leave(1);
  }
  detail::leave(0);
}

}  // namespace coproc
