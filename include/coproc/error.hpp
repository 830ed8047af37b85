// Error codes and exception types of coproc.
#pragma once

#include <coproc/config.hpp>
#include <coproc/exit_status.hpp>

#include <boost/system/system_error.hpp>
#include <string>
#include <system_error>

namespace coproc {

/// Conditions that coproc itself reports (besides errno values from the system).
enum class errc {
  line_too_long = 1,      ///< a line exceeded the reader's line bound
  output_limit_exceeded,  ///< captured output exceeded its bound
  timed_out,              ///< the operation's timeout expired (a command's child is killed)
  not_running,            ///< the child was already reaped or detached
  no_pipe,                ///< the stream was not configured as a pipe
  nonzero_exit,           ///< a process (or pipeline stage) exited unsuccessfully
  malformed_message,      ///< bytes that are not a valid message (truncated, corrupt, invalid)
  message_too_large,      ///< a message larger than the connection's maximum size
  type_mismatch,          ///< a message of another type than the one asked for
  wrong_direction,        ///< sending on a receive-only end, or receiving on a send-only end
  no_result,              ///< a process ended without delivering its result
  worker_died,            ///< a pool worker died while it held the task
  pool_broken,            ///< a pool's worker initializer failed; the pool takes no work
  shut_down,              ///< the pool was shut down before the task could run
};

/// The error category of `coproc::errc`, named "coproc".
const boost::system::error_category& category() noexcept;

inline error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), category()}; }

/// A child could not be started. `what()` names the program (or directory) and the errno
/// text, e.g. `spawn "frobnicate": No such file or directory (not found in PATH)`.
class spawn_error : public boost::system::system_error {
 public:
  spawn_error(error_code ec, std::string program, std::string message);
  /// The program as the caller named it.
  const std::string& program() const noexcept { return program_; }
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string program_;
  std::string message_;
};

/// Thrown by `check()` on a result whose process did not exit successfully. `what()` names
/// the program, the exit status and the last lines of its stderr (when captured).
class process_error : public boost::system::system_error {
 public:
  /// `where` adds context to the message: the command line, or "stage 2 of 3" of a pipeline.
  process_error(std::string program, exit_status status, std::string stderr_tail,
                std::string where = {});
  const std::string& program() const noexcept { return program_; }
  exit_status status() const noexcept { return status_; }
  /// At most the last 4 KiB of the child's stderr, cut at a line start where possible.
  const std::string& stderr_tail() const noexcept { return stderr_tail_; }
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
  std::string program_;
  exit_status status_;
  std::string stderr_tail_;
};

}  // namespace coproc

template <>
struct boost::system::is_error_code_enum<coproc::errc> : std::true_type {};
