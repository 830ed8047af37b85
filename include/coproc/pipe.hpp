// Framed connections between processes: `make_pipe` (Python's multiprocessing.Pipe) and
// `connection` (its Connection), over a Unix stream socketpair.
//
// Every message is one frame: an 8-byte header (payload size, type tag) and the payload.
// Typed values are encoded with <coproc/codec.hpp>; the type tag makes receiving a message
// as the wrong type an error instead of garbage. Reads are buffered (many small frames per
// system call) and a frame goes out in one system call (header and payload together).
#pragma once

#include <coproc/codec.hpp>
#include <coproc/config.hpp>
#include <coproc/error.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_state.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace coproc {

/// An owned file descriptor, closed on destruction (what `connection::receive_fd` returns).
class unique_fd {
 public:
  unique_fd() noexcept = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(o.release()) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  ~unique_fd() { reset(); }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

namespace detail {

struct connection_impl;

// Reserved frame tags; value tags are hashes of the type's name, never below 16.
inline constexpr std::uint32_t bytes_tag = 1;
inline constexpr std::uint32_t exception_tag = 2;
inline constexpr std::uint32_t fd_tag = 3;
inline constexpr std::uint32_t any_tag = 0;  // receive_frame: accept every tag but fd_tag

template <typename T>
consteval std::uint32_t type_tag() {
  const std::string_view name = __PRETTY_FUNCTION__;  // names T; the same in every process
  std::uint32_t h = 2166136261u;                      // of one program (FNV-1a)
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
  return h < 16 ? h + 16 : h;
}

/// One received frame.
struct frame {
  std::uint32_t tag = 0;
  std::string payload;
  unique_fd fd;  // of a descriptor frame
};

}  // namespace detail

/// Settings of a connection.
struct connection_options {
  /// The largest message (frame payload) this end accepts or sends; the limit of the
  /// frame format is 4 GiB - 1. A larger incoming message fails with
  /// `errc::message_too_large` and is skipped; a larger outgoing one is not sent.
  std::size_t max_message_size = 64 * 1024 * 1024;
};

/// Options of `make_pipe`.
struct pipe_options {
  /// false: the first end can only receive and the second only send (Python's
  /// `Pipe(duplex=False)`).
  bool duplex = true;
  std::size_t max_message_size = connection_options{}.max_message_size;
};

/// One end of a framed, bidirectional byte stream between processes.
///
/// Messages: typed values (`send`/`receive`), raw bytes (`send_bytes`/`receive_bytes`) and
/// file descriptors (`send_fd`/`receive_fd`), in order. Each has a blocking form (which
/// throws `boost::system::system_error`), an `error_code&` form where useful, and an
/// `async_` form taking any completion token (`use_awaitable` by default).
///
/// End of stream: when the peer closed its end or died, receives fail with
/// `asio::error::eof` (also when it died in the middle of a message: the partial message is
/// dropped). Sends then fail with `asio::error::broken_pipe`; SIGPIPE is never raised.
///
/// Errors: `errc::type_mismatch` when the next message is of another type (it stays queued
/// and can be received as its own type); `errc::malformed_message` when its bytes do not
/// decode (it is consumed); `errc::message_too_large` (see `connection_options`);
/// `errc::wrong_direction` on the wrong end of a one-way pipe.
///
/// Concurrency: like an Asio socket. One send and one receive may be in progress at a time
/// (they may overlap each other); calls on one connection from several threads at once need a
/// strand. Async operations support per-operation cancellation (all types) while they wait:
/// a cancelled receive completes with `operation_aborted` and loses nothing; a cancelled send
/// completes with `operation_aborted`, and if part of its frame had gone out the connection
/// is closed for sending (the peer sees end-of-stream rather than half a message).
///
/// Destruction and `close()` close the descriptor (the peer sees end-of-stream); pending
/// async operations complete with `operation_aborted`.
class connection {
 public:
  using executor_type = coproc::executor_type;

  /// A closed connection.
  connection() noexcept = default;
  /// Adopts `fd`, a connected AF_UNIX stream socket (for example an end of `make_pipe` passed
  /// to a spawned program with `command::pass_fd`). The descriptor is put in blocking mode
  /// (non-blocking calls pass MSG_DONTWAIT) and made close-on-exec. Throws `system_error` when `fd`
  /// is not such a socket.
  connection(const executor_type& ex, int fd, connection_options options = {});
  connection(connection&&) noexcept;
  connection& operator=(connection&&) noexcept;
  ~connection();

  /// The executor of the connection (the system executor for a closed one).
  executor_type get_executor() const noexcept;
  bool is_open() const noexcept;
  /// Closes the descriptor; the peer sees end-of-stream. Pending operations complete with
  /// `operation_aborted`.
  void close();
  /// The socket descriptor (-1 when closed); it stays owned by the connection.
  int native_handle() const noexcept;
  /// Gives up ownership of the descriptor (and drops buffered received bytes).
  int release();
  bool can_send() const noexcept;
  bool can_receive() const noexcept;
  std::size_t max_message_size() const noexcept;
  void set_max_message_size(std::size_t n);

  // --- typed values ------------------------------------------------------------------------

  /// Sends `value`, blocking until all of it is written to the socket.
  template <encodable T>
  void send(const T& value) {
    error_code ec;
    send(value, ec);
    throw_on_error(ec, "send");
  }
  template <encodable T>
  void send(const T& value, error_code& ec) {
    auto& buf = begin_frame(detail::type_tag<T>());
    encode_to(buf, value);
    end_frame_and_send(ec);
  }

  /// Receives the next message as a T, blocking until it is complete.
  template <encodable T>
  T receive() {
    T value{};
    receive_into(detail::type_tag<T>(), &decode_sink<T>, &value);
    return value;
  }

  /// The next message if it has arrived completely, without blocking; nullopt otherwise.
  template <encodable T>
  std::optional<T> try_receive() {
    T value{};
    if (!try_receive_into(detail::type_tag<T>(), &decode_sink<T>, &value)) return std::nullopt;
    return value;
  }

  /// True when a receive would not block: a message (or part of one), end-of-stream or an
  /// error is there. Waits up to `timeout` (zero: just looks; negative: waits for ever).
  bool poll(std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

  /// Sends `value`. The value is encoded before this returns (it need not outlive the
  /// operation); with the default token into the connection's own send buffer, so await
  /// each send before calling `async_send` again. Completion: `void(error_code)`.
  template <encodable T, typename Token = default_token>
  auto async_send(const T& value, Token&& token = {}) {
    if constexpr (std::is_same_v<std::decay_t<Token>, asio::use_awaitable_t<>>) {
      // co_await async_send(v): encoded into the connection's own buffer and written at
      // once when the socket has room, without suspending or allocating.
      encode_to(begin_frame(detail::type_tag<T>()), value);
      return send_awaitable();
    } else {
      std::string frame = make_frame_buffer(detail::type_tag<T>());
      encode_to(frame, value);
      return async_send_frame(std::move(frame), std::forward<Token>(token));
    }
  }

  /// Receives the next message as a T. Completion: `void(error_code, T)`.
  template <encodable T, typename Token = default_token>
  auto async_receive(Token&& token = {}) {
    if constexpr (std::is_same_v<std::decay_t<Token>, asio::use_awaitable_t<>>) {
      return receive_awaitable<T>();
    } else {
      return asio::async_compose<Token, void(error_code, T)>(
          [this, started = false](auto& self, error_code ec = {}, detail::frame f = {}) mutable {
            if (!started) {
              started = true;
              // Every cancellation type, not only the default terminal.
              self.reset_cancellation_state(asio::enable_total_cancellation());
              return async_receive_frame(detail::type_tag<T>(), std::move(self));
            }
            T value{};
            if (!ec) decode_checked(f.payload, value, ec);
            self.complete(ec, std::move(value));
          },
          token, get_executor());
    }
  }

  // --- raw bytes ---------------------------------------------------------------------------

  /// Sends `data` as one message, received whole by `receive_bytes`.
  void send_bytes(std::string_view data);
  void send_bytes(std::string_view data, error_code& ec);
  /// Receives the next message sent by `send_bytes`.
  std::string receive_bytes();
  /// As above, into `out`, reusing its capacity (no allocation when it is large enough).
  void receive_bytes(std::string& out);
  /// Completion: `void(error_code)`. `data` is copied before this returns.
  template <typename Token = default_token>
  auto async_send_bytes(std::string_view data, Token&& token = {}) {
    std::string frame = make_frame_buffer(detail::bytes_tag);
    frame.append(data);
    return async_send_frame(std::move(frame), std::forward<Token>(token));
  }
  /// Completion: `void(error_code, std::string)`.
  template <typename Token = default_token>
  auto async_receive_bytes(Token&& token = {}) {
    return asio::async_compose<Token, void(error_code, std::string)>(
        [this, started = false](auto& self, error_code ec = {}, detail::frame f = {}) mutable {
          if (!started) {
            started = true;
            // Every cancellation type, not only the default terminal.
            self.reset_cancellation_state(asio::enable_total_cancellation());
            return async_receive_frame(detail::bytes_tag, std::move(self));
          }
          self.complete(ec, std::move(f.payload));
        },
        token, get_executor());
  }

  // --- file descriptors --------------------------------------------------------------------

  /// Sends a duplicate of `fd` (SCM_RIGHTS); the caller keeps `fd`. The receiver gets a new
  /// descriptor, close-on-exec, for the same open file.
  void send_fd(int fd);
  void send_fd(int fd, error_code& ec);
  /// Receives a descriptor sent by `send_fd`.
  unique_fd receive_fd();
  /// Completion: `void(error_code)`. `fd` must stay open until the operation completes.
  template <typename Token = default_token>
  auto async_send_fd(int fd, Token&& token = {}) {
    return asio::async_initiate<Token, void(error_code)>(
        [this](auto handler, int fd) { start_send_fd(fd, std::move(handler)); }, token, fd);
  }
  /// Completion: `void(error_code, unique_fd)`.
  template <typename Token = default_token>
  auto async_receive_fd(Token&& token = {}) {
    return asio::async_compose<Token, void(error_code, unique_fd)>(
        [this, started = false](auto& self, error_code ec = {}, detail::frame f = {}) mutable {
          if (!started) {
            started = true;
            // Every cancellation type, not only the default terminal.
            self.reset_cancellation_state(asio::enable_total_cancellation());
            return async_receive_frame(detail::fd_tag, std::move(self));
          }
          self.complete(ec, std::move(f.fd));
        },
        token, get_executor());
  }

  // --- frames (used by coproc's process layer; stable but low-level) -----------------------

  /// Called with the payload of a received frame (valid only during the call).
  using payload_sink = void (*)(void* context, std::uint32_t tag, std::string_view payload);
  /// Receives the next frame whose tag is `tag` (`detail::any_tag`: any value, bytes or
  /// exception frame) and passes its payload to `sink`. Blocking; throws `system_error`
  /// and what `sink` throws.
  void receive_into(std::uint32_t tag, payload_sink sink, void* context);
  /// As above if the frame has arrived; false (nothing consumed) when it has not.
  bool try_receive_into(std::uint32_t tag, payload_sink sink, void* context);
  /// A buffer holding room for a frame header; append the payload, then send it.
  static std::string make_frame_buffer(std::uint32_t tag);
  /// Sends a buffer from `make_frame_buffer` (the header is filled in here).
  void send_frame(std::string& frame, error_code& ec);
  /// Completion: `void(error_code, detail::frame)`.
  template <typename Token = default_token>
  auto async_receive_frame(std::uint32_t tag, Token&& token = {}) {
    return asio::async_initiate<Token, void(error_code, detail::frame)>(
        [this](auto handler, std::uint32_t tag) { start_receive_frame(tag, std::move(handler)); },
        token, tag);
  }
  /// Completion: `void(error_code)`.
  template <typename Token = default_token>
  auto async_send_frame(std::string frame, Token&& token = {}) {
    return asio::async_initiate<Token, void(error_code)>(
        [this](auto handler, std::string frame) {
          start_send_frame(std::move(frame), std::move(handler));
        },
        token, std::move(frame));
  }

 private:
  static void throw_on_error(const error_code& ec, const char* what);
  std::string& begin_frame(std::uint32_t tag);
  void end_frame_and_send(error_code& ec);
  template <typename T>
  static void decode_checked(std::string_view payload, T& out, error_code& ec) {
    try {
      decode_into(payload, out);
    } catch (const decode_error& e) {
      ec = e.code();
    }
  }
  template <typename T>
  static void decode_sink(void* value, std::uint32_t, std::string_view payload) {
    decode_into(payload, *static_cast<T*>(value));
  }
  // co_await async_receive<T>(): no suspension when the message is already buffered.
  template <typename T>
  asio::awaitable<T> receive_awaitable() {
    T value{};
    if (!try_receive_into(detail::type_tag<T>(), &decode_sink<T>, &value)) {
      detail::frame f = co_await async_receive_frame(detail::type_tag<T>(), asio::use_awaitable);
      decode_into(f.payload, value);
    }
    co_return value;
  }
  void start_receive_frame(std::uint32_t tag,
                           asio::any_completion_handler<void(error_code, detail::frame)> h);
  void start_send_frame(std::string frame, asio::any_completion_handler<void(error_code)> h);
  // The rest of a frame whose first bytes `try_flush` already wrote.
  void start_send_rest(std::string rest, bool began,
                       asio::any_completion_handler<void(error_code)> h);
  // Writes the frame in the connection's buffer without blocking: true when all of it went
  // out; otherwise `rest` holds what is left (`began`: part of it went out) or `ec` the error.
  bool try_flush(std::string& rest, bool& began, error_code& ec);
  asio::awaitable<void> send_awaitable();
  void start_send_fd(int fd, asio::any_completion_handler<void(error_code)> h);

  friend std::pair<connection, connection> make_pipe(const executor_type& ex, pipe_options options);
  // Shared with outstanding operations, so destroying the connection never leaves them
  // dangling.
  std::shared_ptr<detail::connection_impl> p_;
};

/// Two connected ends over a new socketpair (close-on-exec), both bound to
/// `ex`. Duplex by default; see `pipe_options::duplex`. Throws `system_error` (EMFILE, …).
std::pair<connection, connection> make_pipe(const executor_type& ex, pipe_options options = {});

}  // namespace coproc
