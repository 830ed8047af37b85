// How a process ended: an exit code or the signal that terminated it.
#pragma once

#include <string>

namespace coproc {

/// The typed result of waiting for a process. A non-zero exit is a value, not an error:
/// call `success()` or `check()` on a run's result to turn it into one.
class exit_status {
 public:
  constexpr exit_status() noexcept = default;
  /// A normal exit with `code` (0..255).
  static constexpr exit_status exited(int code) noexcept { return {code, 0, false}; }
  /// Death by signal `sig`; `core_dumped` when the kernel wrote a core.
  static constexpr exit_status signaled(int sig, bool core_dumped = false) noexcept {
    return {0, sig, core_dumped};
  }
  /// From a `waitpid`-style status word.
  static exit_status from_wait_status(int status) noexcept;

  /// True when the process called exit (or returned from main).
  constexpr bool is_exited() const noexcept { return signal_ == 0; }
  /// True when a signal ended the process.
  constexpr bool is_signaled() const noexcept { return signal_ != 0; }
  /// The exit code; 0 when signalled.
  constexpr int code() const noexcept { return code_; }
  /// The terminating signal; 0 when exited.
  constexpr int signal() const noexcept { return signal_; }
  constexpr bool core_dumped() const noexcept { return core_; }
  /// Exited with code 0.
  constexpr bool success() const noexcept { return signal_ == 0 && code_ == 0; }
  /// The shell's convention: the code, or 128 + signal.
  constexpr int shell_code() const noexcept { return signal_ ? 128 + signal_ : code_; }

  /// "exit code 3", "signal 9 (SIGKILL)", "signal 11 (SIGSEGV, core dumped)".
  std::string to_string() const;

  friend constexpr bool operator==(exit_status, exit_status) noexcept = default;

 private:
  constexpr exit_status(int code, int sig, bool core) noexcept
      : code_(code), signal_(sig), core_(core) {}
  int code_ = 0;
  int signal_ = 0;
  bool core_ = false;
};

/// "SIGKILL" for 9, "SIG42" for signals without a name.
std::string signal_name(int sig);

}  // namespace coproc
