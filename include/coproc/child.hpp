// A running child process: its pid, its pipes, and its exit.
#pragma once

#include <coproc/command.hpp>
#include <coproc/config.hpp>
#include <coproc/exit_status.hpp>
#include <coproc/stream.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>

#include <memory>
#include <optional>

namespace coproc {

namespace detail {
struct child_state;
struct spawner;
}  // namespace detail

/// Owns one child process.
///
/// Destruction: if the child was neither reaped (a wait completed) nor detached, the
/// destructor sends SIGKILL (to its process group when the child leads one) and hands it to
/// a reaper on the child's execution context, which collects the exit without blocking the
/// event loop. No zombie is left: if the context is destroyed first, it reaps the killed
/// children in its shutdown.
///
/// Moving a child is allowed while operations are outstanding on it or its pipes.
class child {
 public:
  using executor_type = coproc::executor_type;

  /// An empty child (as after a failed spawn or a move): only `pid()` (-1), `running()`
  /// (false), assignment and destruction may be used.
  child() noexcept = default;
  child(child&&) noexcept;
  child& operator=(child&&) noexcept;
  ~child();

  executor_type get_executor() const noexcept;
  /// The process id; stays valid (for messages) after the child is reaped.
  int pid() const noexcept;
  /// The program as the command named it.
  const std::string& program() const noexcept;
  /// True if the child leads its own process group (new_process_group / new_session).
  bool leads_group() const noexcept;

  /// The parent's end of the child's stdin/stdout/stderr. Not open unless that stream was
  /// configured as `stdio::pipe()` (stdout and stderr merged share `std_out()`).
  pipe_writer& std_in() noexcept;
  pipe_reader& std_out() noexcept;
  pipe_reader& std_err() noexcept;

  /// Waits for the child to exit and reaps it. May be called again after completion (it
  /// then completes at once with the same status). Completion:
  /// `void(error_code, exit_status)`; error `errc::not_running` after `detach()`, ECHILD
  /// when someone else reaped the child (e.g. SIGCHLD set to SIG_IGN) and its status is lost.
  /// Cancellation: per-operation, all types; cancelling a wait never affects the child.
  template <typename Token = default_token>
  auto async_wait(Token&& token = {}) {
    return asio::async_initiate<Token, void(error_code, exit_status)>(
        [this](auto handler) { start_wait(std::move(handler)); }, token);
  }

  /// Blocks the calling thread until the child exits. Do not call it on a thread that is
  /// needed to run the child's event loop. Throws `boost::system::system_error`.
  exit_status wait();
  /// Reaps the child if it has exited; never blocks.
  std::optional<exit_status> try_wait();
  /// The status once the child was reaped.
  std::optional<exit_status> status() const noexcept;
  /// True until the child is reaped or detached (an exited but unreaped child counts as
  /// running).
  bool running() const noexcept;

  /// Sends `sig` to the child. No effect once reaped (so never a recycled pid).
  /// Throws `system_error` on failure (errors other than ESRCH).
  void signal(int sig);
  void interrupt();  ///< SIGINT
  void terminate();  ///< SIGTERM
  void kill();       ///< SIGKILL
  /// Sends `sig` to the child's whole tree: its process group when it leads one (also after
  /// the leader was reaped), else the child and every descendant found under /proc, plus
  /// those found by earlier calls (so a second signal still reaches descendants re-parented
  /// after the child died). Best effort without a group: a grandchild that left the tree
  /// before the first call is only reached through a process group.
  void signal_tree(int sig);

  /// Gives up ownership: the child keeps running after this object is destroyed. It never
  /// keeps `io_context::run()` busy; once it has exited it is reaped by the next spawn or
  /// reap on the same execution context, or when that context shuts down (as tokio reaps
  /// orphans). One still running then is re-parented to init when this process exits.
  void detach();

 private:
  friend struct detail::child_state;
  friend struct detail::spawner;
  explicit child(std::shared_ptr<detail::child_state> s) noexcept;
  void start_wait(asio::any_completion_handler<void(error_code, exit_status)> h);
  std::shared_ptr<detail::child_state> s_;
};

/// Starts `cmd` with its stdio defaulting to inherit. The calling thread waits only until
/// the child has called execve (tens of microseconds); the event loop is not needed.
/// Errors (`spawn_error`): program not found or not executable, bad working directory,
/// unopenable stdio file, out of processes or descriptors; each names the program or path
/// and the errno text. A failed spawn leaves no process and no descriptor behind.
child spawn(const executor_type& ex, const command& cmd);
/// As above, reporting failure through `ec` (the returned child is then empty).
child spawn(const executor_type& ex, const command& cmd, error_code& ec);

/// Asynchronous form of `spawn` for uniformity with the other operations. The child is
/// bound to `ex`. Completion: `void(error_code, child)`.
template <typename Token = default_token>
auto async_spawn(const executor_type& ex, const command& cmd, Token&& token = {}) {
  return asio::async_initiate<Token, void(error_code, child)>(
      [](auto handler, const executor_type& ex, const command& cmd) {
        error_code ec;
        child c = spawn(ex, cmd, ec);
        auto hex = asio::get_associated_executor(handler, ex);
        asio::post(hex, [h = std::move(handler), ec, c = std::move(c)]() mutable {
          std::move(h)(ec, std::move(c));
        });
      },
      token, ex, cmd);
}

/// `co_await async_spawn(cmd)` inside a coroutine: the child is bound to the coroutine's
/// executor.
inline asio::awaitable<child> async_spawn(const command& cmd) {
  co_return spawn(co_await asio::this_coro::executor, cmd);
}

}  // namespace coproc
