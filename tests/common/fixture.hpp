// Shared test fixture: an io_context with a deadline-guarded `run`, a no-leak check after
// every test (no child process left, no descriptor leaked), and small utilities.
#pragma once

#include "pattern.hpp"

#include <coproc/command.hpp>
#include <coproc/config.hpp>
#include <coproc/exit_status.hpp>
#include <coproc/stream.hpp>

#include <gtest/gtest.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#ifndef COPROC_HELPER
#error "COPROC_HELPER must name the helper program"
#endif

// Readable gtest messages for coproc's value types.
namespace coproc {
inline void PrintTo(const exit_status& s, std::ostream* os) { *os << s.to_string(); }
}  // namespace coproc

namespace coproc_test {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using coproc::error_code;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool sanitized = true;
#else
inline constexpr bool sanitized = false;
#endif
#else
inline constexpr bool sanitized = false;
#endif

/// Path of tests/helpers/coproc_helper.
inline std::string helper_path() { return COPROC_HELPER; }

/// `coproc_helper args...` as a command.
template <typename... Args>
requires(std::convertible_to<Args, std::string_view>&&...) coproc::command helper(Args&&... args) {
  coproc::command c{helper_path()};
  (c.arg(std::string(std::string_view(args))), ...);
  return c;
}

/// Thrown by `io_test::run` when the deadline passed; gtest reports it as a failure.
struct deadline_exceeded : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --- leak checks -----------------------------------------------------------------------

/// Open descriptors of this process with what they point to.
std::map<int, std::string> open_fds();
/// Children of this process (pid -> "comm state"), from /proc, for messages.
std::map<int, std::string> child_processes();
/// Empty when this process has no child (running or zombie); else a description.
std::string leftover_children();

/// Lines of `s` (split at '\n'; a final newline does not start another line).
std::vector<std::string> split_lines(std::string_view s);

/// Sets the soft RLIMIT_NOFILE to at least `n` (up to the hard limit); returns the new soft
/// limit.
std::size_t raise_fd_limit(std::size_t n);

/// A temporary directory, removed with its contents on destruction.
class temp_dir {
 public:
  temp_dir();
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::filesystem::path& path() const noexcept { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

std::string read_file(const std::filesystem::path& p);
void write_file(const std::filesystem::path& p, std::string_view data);

/// A pipe created O_CLOEXEC. Tests pass the write end to a child (`pass_fd`) and read the
/// other: "ready" lines as handshakes, and end-of-file once every process holding the write
/// end is gone (a child and its grandchildren): an event, not a sleep.
class raw_pipe {
 public:
  raw_pipe();
  ~raw_pipe();
  raw_pipe(const raw_pipe&) = delete;
  raw_pipe& operator=(const raw_pipe&) = delete;
  int read_end() const noexcept { return r_; }
  int write_end() const noexcept { return w_; }
  void close_read();
  void close_write();
  /// Hands the read end to a pipe_reader (the pipe no longer owns it).
  coproc::pipe_reader reader(const coproc::executor_type& ex);

 private:
  int r_ = -1, w_ = -1;
};

/// Sends SIGKILL to `pid` if it is still alive (for grandchildren a test saw).
void kill_quietly(int pid);

/// Blocks until `pid` (our child) has exited, without reaping it (waitid WNOWAIT).
bool wait_exited_no_reap(int pid);
/// True when `pid` is not (any more) our child: reaped by someone.
/// True when `pid` (a child of ours) has exited but nobody has reaped it yet.
bool exited_unreaped(int pid);
bool reaped(int pid);

// --- the fixture -------------------------------------------------------------------------

/// An io_context per test, and after each test: the context is drained and destroyed, then
/// no child process may remain and no descriptor may be open that was not open before.
class io_test : public ::testing::Test {
 protected:
  io_test();
  ~io_test() override;
  void SetUp() override;
  void TearDown() override;

  asio::io_context& ctx() { return *ctx_; }
  coproc::executor_type ex() { return ctx_->get_executor(); }

  /// Runs `a` on the io_context (on the calling thread, plus `threads - 1` more) until it
  /// completes, and returns its value or rethrows its exception. If `deadline` passes first,
  /// the coroutine is cancelled and `deadline_exceeded` thrown: the test fails, never hangs.
  template <typename T>
  T run(asio::awaitable<T> a, std::chrono::steady_clock::duration deadline = 60s, int threads = 1) {
    // Shared with the completion handler, which may outlive this call when the coroutine
    // hangs past its deadline.
    struct state : run_state {
      std::optional<std::conditional_t<std::is_void_v<T>, char, T>> value;
    };
    auto st = std::make_shared<state>();
    auto slot = st->cancel.slot();
    if constexpr (std::is_void_v<T>) {
      asio::co_spawn(ctx(), std::move(a),
                     asio::bind_cancellation_slot(slot, [st](std::exception_ptr e) {
                       st->error = e;
                       st->value.emplace();
                       st->done = true;
                     }));
    } else {
      asio::co_spawn(ctx(), std::move(a),
                     asio::bind_cancellation_slot(slot, [st](std::exception_ptr e, T v) {
                       st->error = e;
                       if (!e) st->value.emplace(std::move(v));
                       st->done = true;
                     }));
    }
    drive(st, deadline, threads);
    if (!st->done) throw deadline_exceeded("io_test::run: the coroutine did not complete");
    if (st->error) std::rethrow_exception(st->error);
    if constexpr (!std::is_void_v<T>) return std::move(*st->value);
  }

  /// Runs the io_context until `pred()` holds (checked after every handler) or `deadline`
  /// passes; returns pred(). For waiting on effects of handlers (e.g. a reaper).
  template <typename Pred>
  bool run_until(Pred pred, std::chrono::steady_clock::duration deadline = 30s) {
    auto until = std::chrono::steady_clock::now() + deadline;
    ctx().restart();
    while (!pred() && std::chrono::steady_clock::now() < until) {
      // The short slice makes conditions that no handler signals (a process reaped by the
      // context's shutdown, say) visible too.
      ctx().run_one_for(10ms);
      if (ctx().stopped()) ctx().restart();
    }
    return pred();
  }

  /// Set in a test that deliberately leaves descriptors (none should).
  bool skip_fd_check_ = false;

 private:
  struct run_state {
    std::exception_ptr error;
    std::atomic<bool> done{false};
    asio::cancellation_signal cancel;
  };
  void drive(std::shared_ptr<run_state> st, std::chrono::steady_clock::duration deadline,
             int threads);
  std::optional<asio::io_context> ctx_;
  std::map<int, std::string> fds_before_;
};

}  // namespace coproc_test
