// subprocess.run: spawn, feed input, capture both outputs and wait, all concurrently.
#pragma once

#include <coproc/child.hpp>
#include <coproc/command.hpp>
#include <coproc/config.hpp>
#include <coproc/exit_status.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/this_coro.hpp>

#include <string>

namespace coproc {

/// The outcome of `async_run`: how the child ended and what it wrote.
struct completed {
  std::string program;
  /// The whole command, quoted as a shell would show it (for messages).
  std::string command_line;
  exit_status status;
  /// Captured stdout (empty unless stdout was captured). Partial after a timeout or
  /// cancellation.
  std::string out;
  /// Captured stderr (empty when merged into stdout or not captured).
  std::string err;
  /// True when the child exited but its pipes stayed open (a grandchild held them) past the
  /// command's output grace period, so the capture may be incomplete.
  bool output_truncated = false;

  bool success() const noexcept { return status.success(); }
  /// Returns `*this` if the child exited with 0, else throws `process_error` naming the
  /// program, the status and the tail of stderr (of stdout when stderr was merged).
  const completed& check() const&;
  completed&& check() &&;
};

namespace detail {
/// `cmd` with async_run's stdio defaults applied.
command with_run_defaults(command cmd);
void start_run(const executor_type& ex, command cmd,
               asio::any_completion_handler<void(error_code, completed)> handler);
void start_run_child(const executor_type& ex, child c, const command& cmd,
                     asio::any_completion_handler<void(error_code, completed)> handler);
}  // namespace detail

/// Runs `cmd` to completion. Unless the command sets them, stdin is /dev/null and stdout
/// and stderr are captured into `completed::out` / `completed::err` (bounded by
/// `max_output`). Feeding stdin, draining both outputs and waiting progress concurrently,
/// so no size of input or output can deadlock.
///
/// Completion: `void(error_code, completed)`. A non-zero exit is not an error (see
/// `completed::check`). Errors: spawn failures as errno values (`run` and the coroutine
/// form below throw `spawn_error`, which also names the program or path),
/// `errc::output_limit_exceeded` (the child is killed), `errc::timed_out` when `cmd.timeout()`
/// expired, `operation_aborted` when cancelled. With every error after the spawn, `completed` still
/// carries the status and the output captured so far (use `asio::as_tuple` or a callback to see
/// it).
///
/// Cancellation (all types) and timeout: the child's tree gets SIGTERM, then SIGKILL after
/// `cmd.kill_grace()` if still alive; the child is reaped before the operation completes.
/// When the child exits while a grandchild still holds its pipes, reading stops after
/// `cmd.output_grace()` and `completed::output_truncated` is set.
template <typename Token = default_token>
auto async_run(const executor_type& ex, command cmd, Token&& token = {}) {
  return asio::async_initiate<Token, void(error_code, completed)>(
      [](auto handler, const executor_type& ex, command cmd) {
        detail::start_run(ex, std::move(cmd), std::move(handler));
      },
      token, ex, std::move(cmd));
}

/// `co_await async_run(cmd)` inside a coroutine, on the coroutine's executor. Unlike the
/// token form, a spawn failure arrives as `spawn_error` naming the program or path.
inline asio::awaitable<completed> async_run(command cmd) {
  auto ex = co_await asio::this_coro::executor;
  cmd = detail::with_run_defaults(std::move(cmd));
  child c = spawn(ex, cmd);
  co_return co_await asio::async_initiate<const asio::use_awaitable_t<>,
                                          void(error_code, completed)>(
      [&](auto handler) { detail::start_run_child(ex, std::move(c), cmd, std::move(handler)); },
      asio::use_awaitable);
}

/// Blocking form for plain code: runs `cmd` on a private io_context.
/// Throws `spawn_error` or `boost::system::system_error` for the errors above.
completed run(command cmd);

}  // namespace coproc
