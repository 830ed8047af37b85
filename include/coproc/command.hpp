// A description of a program to start: what, with which arguments, environment and stdio.
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <optional>
#include <ranges>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace coproc {

/// Where one of the child's standard streams goes. Build with the static functions.
class stdio {
 public:
  enum class kind { inherit, null, pipe, file, fd, bytes, to_stdout };

  /// The child shares the parent's descriptor.
  static stdio inherit() { return stdio{kind::inherit}; }
  /// /dev/null.
  static stdio null() { return stdio{kind::null}; }
  /// A pipe to the parent: `child::std_in()` / `std_out()` / `std_err()`.
  static stdio pipe() { return stdio{kind::pipe}; }
  /// A file: opened for reading as stdin; for output created (mode 0666 & ~umask) and
  /// truncated, or appended to when `append`. Open errors are spawn errors naming the path.
  static stdio file(std::filesystem::path path, bool append = false) {
    stdio s{kind::file};
    s.path_ = std::move(path);
    s.append_ = append;
    return s;
  }
  /// A descriptor of the caller's, duplicated into the child; the caller keeps ownership.
  static stdio fd(int descriptor) {
    stdio s{kind::fd};
    s.fd_ = descriptor;
    return s;
  }
  /// stdin only: the parent writes `data` to a pipe and closes it. The feed runs
  /// concurrently with everything else and stops quietly if the child closes its end.
  static stdio bytes(std::string data) {
    stdio s{kind::bytes};
    s.data_ = std::move(data);
    return s;
  }
  /// stderr only: the child's stderr goes wherever its stdout goes (Python's stderr=STDOUT).
  static stdio to_stdout() { return stdio{kind::to_stdout}; }

  kind type() const noexcept { return kind_; }
  const std::filesystem::path& path() const noexcept { return path_; }
  bool append() const noexcept { return append_; }
  int descriptor() const noexcept { return fd_; }
  const std::string& data() const noexcept { return data_; }

 private:
  explicit stdio(kind k) : kind_(k) {}
  kind kind_;
  std::filesystem::path path_;
  std::string data_;
  int fd_ = -1;
  bool append_ = false;
};

/// Limits and grace periods. All durations are measured on `std::chrono::steady_clock`.
struct limits {
  /// Longest line `async_read_line` accepts (without its newline).
  std::size_t max_line = std::size_t{1} << 20;
  /// Most bytes `async_run` captures per stream.
  std::size_t max_output = std::size_t{1} << 30;
  /// Size the parent's read pipes are grown to (best effort; 0 keeps the kernel default).
  std::size_t pipe_size = std::size_t{1} << 20;
};

/// The program, its arguments, environment, working directory, stdio and process-group
/// settings. A value type: copy it, change it, spawn it many times. Arguments are passed
/// verbatim (no shell) unless built with `command::shell`.
///
/// Every child starts with: descriptors 0, 1, 2 and those given to `pass_fd`, nothing else
/// (close-on-exec or not); default handlers for every signal the parent catches, SIGPIPE at
/// its default even if the parent ignores it, other ignored signals still ignored; an empty
/// signal mask; the parent's original RLIMIT_NOFILE (see docs/design.md).
///
///     auto c = command{"git", "log", "-n", "3"}.cwd(repo).std_err(stdio::null());
class command {
 public:
  using duration = std::chrono::steady_clock::duration;

  /// `program` is looked up in PATH (the child's PATH if the command sets one) unless it
  /// contains a '/'. The remaining arguments become argv[1..].
  explicit command(std::string program) : program_(std::move(program)) {}
  template <typename... Args>
  requires(sizeof...(Args) > 0 && (std::convertible_to<Args, std::string_view> && ...))
      command(std::string program, Args&&... args)
      : program_(std::move(program)) {
    args_.reserve(sizeof...(Args));
    (args_.emplace_back(std::string_view(args)), ...);
  }

  /// `/bin/sh -c script`: the only way coproc involves a shell.
  static command shell(std::string script) {
    command c{"/bin/sh"};
    c.args_ = {"-c", std::move(script)};
    return c;
  }

  // --- arguments ------------------------------------------------------------------
  command& arg(std::string a) & {
    args_.push_back(std::move(a));
    return *this;
  }
  command&& arg(std::string a) && { return std::move(arg(std::move(a))); }
  template <std::ranges::input_range R>
  requires std::convertible_to<std::ranges::range_reference_t<R>, std::string_view> command& args(
      R&& range) & {
    for (auto&& a : range) args_.emplace_back(std::string_view(a));
    return *this;
  }
  template <std::ranges::input_range R>
  requires std::convertible_to<std::ranges::range_reference_t<R>, std::string_view> command &&
      args(R&& range) && {
    return std::move(args(std::forward<R>(range)));
  }
  /// argv[0] as the child sees it (default: the program as given).
  command& arg0(std::string a) & {
    arg0_ = std::move(a);
    return *this;
  }
  command&& arg0(std::string a) && { return std::move(arg0(std::move(a))); }

  // --- environment ----------------------------------------------------------------
  /// Set `key=value` in the child's environment.
  command& env(std::string key, std::string value) & {
    env_ops_.emplace_back(std::move(key), std::move(value));
    return *this;
  }
  command&& env(std::string key, std::string value) && {
    return std::move(env(std::move(key), std::move(value)));
  }
  /// Remove `key` from the child's environment.
  command& env_remove(std::string key) & {
    env_ops_.emplace_back(std::move(key), std::nullopt);
    return *this;
  }
  command&& env_remove(std::string key) && { return std::move(env_remove(std::move(key))); }
  /// Start from an empty environment instead of the parent's (later `env` calls still apply).
  command& env_clear() & {
    inherit_env_ = false;
    env_ops_.clear();
    return *this;
  }
  command&& env_clear() && { return std::move(env_clear()); }

  // --- working directory ----------------------------------------------------------
  command& cwd(std::filesystem::path dir) & {
    cwd_ = std::move(dir);
    return *this;
  }
  command&& cwd(std::filesystem::path dir) && { return std::move(cwd(std::move(dir))); }

  // --- stdio ------------------------------------------------------------------------
  command& std_in(stdio s) & {
    in_ = std::move(s);
    return *this;
  }
  command&& std_in(stdio s) && { return std::move(std_in(std::move(s))); }
  command& std_out(stdio s) & {
    out_ = std::move(s);
    return *this;
  }
  command&& std_out(stdio s) && { return std::move(std_out(std::move(s))); }
  command& std_err(stdio s) & {
    err_ = std::move(s);
    return *this;
  }
  command&& std_err(stdio s) && { return std::move(std_err(std::move(s))); }
  /// Shorthand for `std_in(stdio::bytes(data))`.
  command& input(std::string data) & { return std_in(stdio::bytes(std::move(data))); }
  command&& input(std::string data) && { return std::move(input(std::move(data))); }
  /// Shorthand for `std_err(stdio::to_stdout())`.
  command& merge_stderr() & { return std_err(stdio::to_stdout()); }
  command&& merge_stderr() && { return std::move(merge_stderr()); }
  /// Make `parent_fd` (not consumed) visible in the child as `child_fd` (>= 3). Every
  /// other descriptor of the parent is closed in the child.
  command& pass_fd(int child_fd, int parent_fd) & {
    extra_fds_.emplace_back(child_fd, parent_fd);
    return *this;
  }
  command&& pass_fd(int child_fd, int parent_fd) && {
    return std::move(pass_fd(child_fd, parent_fd));
  }

  // --- process settings -------------------------------------------------------------
  /// The child leads a new process group, so signals can reach its whole tree.
  command& new_process_group(bool on = true) & {
    new_group_ = on;
    return *this;
  }
  command&& new_process_group(bool on = true) && { return std::move(new_process_group(on)); }
  /// The child starts a new session (setsid), detached from the controlling terminal; it
  /// also leads a new process group.
  command& new_session(bool on = true) & {
    new_session_ = on;
    return *this;
  }
  command&& new_session(bool on = true) && { return std::move(new_session(on)); }
  /// The kernel sends SIGKILL to the child when the thread that spawned it exits
  /// (PR_SET_PDEATHSIG), which covers the parent dying by any means.
  command& die_with_parent(bool on = true) & {
    die_with_parent_ = on;
    return *this;
  }
  command&& die_with_parent(bool on = true) && { return std::move(die_with_parent(on)); }

  // --- limits and time (used by readers and by async_run) -------------------------
  command& max_line(std::size_t bytes) & {
    limits_.max_line = bytes;
    return *this;
  }
  command&& max_line(std::size_t bytes) && { return std::move(max_line(bytes)); }
  command& max_output(std::size_t bytes) & {
    limits_.max_output = bytes;
    return *this;
  }
  command&& max_output(std::size_t bytes) && { return std::move(max_output(bytes)); }
  command& pipe_size(std::size_t bytes) & {
    limits_.pipe_size = bytes;
    return *this;
  }
  command&& pipe_size(std::size_t bytes) && { return std::move(pipe_size(bytes)); }
  /// `async_run` cancels itself after `d` (the child tree is killed with the ladder below)
  /// and completes with `errc::timed_out` and the partial output.
  command& timeout(duration d) & {
    timeout_ = d;
    return *this;
  }
  command&& timeout(duration d) && { return std::move(timeout(d)); }
  /// On cancellation, `async_run` sends SIGTERM, waits `d`, then sends SIGKILL. Default 2 s.
  command& kill_grace(duration d) & {
    kill_grace_ = d;
    return *this;
  }
  command&& kill_grace(duration d) && { return std::move(kill_grace(d)); }
  /// After the child exits, `async_run` waits at most `d` for its output pipes to reach
  /// end-of-file (a grandchild may still hold them) before it stops reading. Default 1 s.
  command& output_grace(duration d) & {
    output_grace_ = d;
    return *this;
  }
  command&& output_grace(duration d) && { return std::move(output_grace(d)); }

  // --- accessors --------------------------------------------------------------------
  const std::string& program() const noexcept { return program_; }
  const std::vector<std::string>& arguments() const noexcept { return args_; }
  const std::optional<std::string>& argv0() const noexcept { return arg0_; }
  bool inherits_env() const noexcept { return inherit_env_; }
  /// Environment changes in call order; a missing value means "remove".
  const std::vector<std::pair<std::string, std::optional<std::string>>>& env_changes()
      const noexcept {
    return env_ops_;
  }
  const std::optional<std::filesystem::path>& working_directory() const noexcept { return cwd_; }
  const std::optional<stdio>& std_in_config() const noexcept { return in_; }
  const std::optional<stdio>& std_out_config() const noexcept { return out_; }
  const std::optional<stdio>& std_err_config() const noexcept { return err_; }
  const std::vector<std::pair<int, int>>& extra_fds() const noexcept { return extra_fds_; }
  bool process_group() const noexcept { return new_group_ || new_session_; }
  bool session() const noexcept { return new_session_; }
  bool dies_with_parent() const noexcept { return die_with_parent_; }
  const struct limits& limits() const noexcept { return limits_; }
  const std::optional<duration>& timeout_value() const noexcept { return timeout_; }
  duration kill_grace_value() const noexcept { return kill_grace_; }
  duration output_grace_value() const noexcept { return output_grace_; }

  /// The argument vector as a shell would show it, quoted where needed (for messages).
  std::string to_string() const;

 private:
  std::string program_;
  std::vector<std::string> args_;
  std::optional<std::string> arg0_;
  std::vector<std::pair<std::string, std::optional<std::string>>> env_ops_;
  bool inherit_env_ = true;
  std::optional<std::filesystem::path> cwd_;
  std::optional<stdio> in_, out_, err_;
  std::vector<std::pair<int, int>> extra_fds_;
  bool new_group_ = false;
  bool new_session_ = false;
  bool die_with_parent_ = false;
  struct limits limits_;
  std::optional<duration> timeout_;
  duration kill_grace_ = std::chrono::seconds(2);
  duration output_grace_ = std::chrono::seconds(1);
};

}  // namespace coproc
