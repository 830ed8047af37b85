// Asynchronous readers and writers over the parent's ends of a child's pipes.
#pragma once

#include <coproc/config.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

namespace coproc {

namespace detail {
struct reader_impl;
struct writer_impl;
}  // namespace detail

/// Reads bytes, lines or everything from a pipe, with a bounded line length.
///
/// Bytes are never dropped: data read ahead for line splitting stays in an internal buffer
/// that every read operation drains first, also after an error such as `errc::line_too_long`
/// or after a cancelled operation. At most one read operation may be outstanding at a time.
///
/// Cancellation: every operation supports per-operation cancellation (all cancellation
/// types). A cancelled operation completes with `asio::error::operation_aborted` and
/// consumes nothing.
///
/// Destruction and move are allowed while an operation is outstanding: destruction closes
/// the pipe and the operation completes with `operation_aborted`.
class pipe_reader {
 public:
  using executor_type = coproc::executor_type;

  /// A closed reader (it holds no resources).
  pipe_reader() noexcept = default;
  explicit pipe_reader(const executor_type&) noexcept {}
  /// Takes ownership of `fd`, the read end of a pipe.
  pipe_reader(const executor_type& ex, int fd, std::size_t max_line = std::size_t{1} << 20);
  pipe_reader(pipe_reader&&) noexcept;
  pipe_reader& operator=(pipe_reader&&) noexcept;
  ~pipe_reader();

  /// The executor of the pipe (the system executor for a reader that was never a pipe:
  /// operations on it complete with `errc::no_pipe` through the handler's associated
  /// executor, or the system executor when the handler has none).
  executor_type get_executor() const noexcept;
  bool is_open() const noexcept;
  /// The descriptor, or -1.
  int native_handle() const noexcept;
  /// Closes the pipe; the child then gets EPIPE/SIGPIPE when it writes. Outstanding
  /// operations complete with `operation_aborted`; buffered bytes stay readable.
  void close();
  /// True after end-of-file was read (buffered bytes may remain).
  bool eof() const noexcept;
  /// Bytes read from the pipe but not yet consumed.
  std::size_t buffered() const noexcept;
  void set_max_line(std::size_t bytes) noexcept;
  std::size_t max_line() const noexcept;

  /// Reads at least one byte into `buffer` (buffered bytes first).
  /// Completion: `void(error_code, std::size_t bytes)`; `asio::error::eof` at end of file.
  template <typename Token = default_token>
  auto async_read_some(asio::mutable_buffer buffer, Token&& token = {}) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, asio::mutable_buffer b) { start_read_some(b, std::move(handler)); },
        token, buffer);
  }

  /// Reads one line. The value is the line without its "\n" (and without a "\r" before
  /// it); a final line without a newline is returned at end-of-file; `std::nullopt` means
  /// end-of-file with nothing left. Errors: `errc::line_too_long` when no newline appears
  /// within `max_line()` bytes (those bytes stay buffered: `async_read_some` gets them).
  /// Completion: `void(error_code, std::optional<std::string>)`.
  template <typename Token = default_token>
  auto async_read_line(Token&& token = {}) {
    if constexpr (std::is_same_v<std::decay_t<Token>, asio::use_awaitable_t<>>) {
      // Coroutines take a line that is already buffered without a trip through the
      // scheduler; otherwise this is the general operation below.
      return read_line_awaitable();
    } else {
      return asio::async_initiate<Token, void(error_code, std::optional<std::string>)>(
          [this](auto handler) { start_read_line(std::move(handler)); }, token);
    }
  }

  /// Reads until end-of-file and returns everything. Errors: `errc::output_limit_exceeded`
  /// when more than `limit` bytes arrive; the first `limit` bytes are returned with it and
  /// the rest stays readable. Completion: `void(error_code, std::string)`.
  template <typename Token = default_token>
  auto async_read_all(std::size_t limit, Token&& token = {}) {
    return asio::async_initiate<Token, void(error_code, std::string)>(
        [this](auto handler, std::size_t l) { start_read_all(l, std::move(handler)); }, token,
        limit);
  }
  template <typename Token = default_token>
  auto async_read_all(Token&& token = {}) {
    return async_read_all(std::size_t(-1), std::forward<Token>(token));
  }

  /// The fast path for line-oriented output: calls `fn(std::string_view line)` for every
  /// line until end-of-file, without allocating or completing an operation per line. The
  /// view is valid only during the call. Completion: `void(error_code, std::size_t lines)`.
  /// Errors as for `async_read_line`; on cancellation the lines already passed stay passed.
  template <typename Fn, typename Token = default_token>
  requires std::invocable<Fn&, std::string_view>
  auto async_for_each_line(Fn fn, Token&& token = {}) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, Fn f) {
          start_for_each_line(std::function<void(std::string_view)>(std::move(f)),
                              std::move(handler));
        },
        token, std::move(fn));
  }

 private:
  void start_read_some(asio::mutable_buffer b,
                       asio::any_completion_handler<void(error_code, std::size_t)> h);
  void start_read_line(
      asio::any_completion_handler<void(error_code, std::optional<std::string>)> h);
  void start_read_all(std::size_t limit,
                      asio::any_completion_handler<void(error_code, std::string)> h);
  void start_for_each_line(std::function<void(std::string_view)> fn,
                           asio::any_completion_handler<void(error_code, std::size_t)> h);

  asio::awaitable<std::optional<std::string>> read_line_awaitable();

  // Shared with outstanding operations, so destroying the reader never leaves them dangling.
  std::shared_ptr<detail::reader_impl> p_;
};

/// Writes to a pipe. Writing after the child closed its end completes with
/// `asio::error::broken_pipe` (EPIPE); the parent never receives SIGPIPE for it.
///
/// Cancellation: per-operation, all types; a cancelled write reports the bytes written.
/// Destruction closes the pipe (the child sees end-of-file); an outstanding write then
/// completes with `operation_aborted`.
class pipe_writer {
 public:
  using executor_type = coproc::executor_type;

  /// A closed writer (it holds no resources).
  pipe_writer() noexcept = default;
  explicit pipe_writer(const executor_type&) noexcept {}
  /// Takes ownership of `fd`, the write end of a pipe.
  pipe_writer(const executor_type& ex, int fd);
  pipe_writer(pipe_writer&&) noexcept;
  pipe_writer& operator=(pipe_writer&&) noexcept;
  ~pipe_writer();

  /// The executor of the pipe (the system executor for a closed writer).
  executor_type get_executor() const noexcept;
  bool is_open() const noexcept;
  /// The descriptor, or -1.
  int native_handle() const noexcept;
  /// Closes the pipe: the child reads end-of-file.
  void close();

  /// Writes all of `data`. Completion: `void(error_code, std::size_t written)`.
  /// The buffer must stay valid until completion.
  template <typename Token = default_token>
  auto async_write(asio::const_buffer data, Token&& token = {}) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, asio::const_buffer b) { start_write(b, std::move(handler)); }, token,
        data);
  }

 private:
  void start_write(asio::const_buffer b,
                   asio::any_completion_handler<void(error_code, std::size_t)> h);
  std::shared_ptr<detail::writer_impl> p_;
};

}  // namespace coproc
