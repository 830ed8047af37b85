#include <coproc/stream.hpp>

#include <coproc/error.hpp>

#include <boost/asio/compose.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/system_executor.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <pthread.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>

namespace coproc {
namespace {

// The read buffer starts small (an idle reader of a quiet child costs little) and grows while
// reads fill it, up to the size the parent's pipes are grown to.
constexpr std::size_t initial_buffer = 4 * 1024;
constexpr std::size_t max_read_buffer = 1024 * 1024;

// write(2) that reports EPIPE without letting SIGPIPE reach the process: the signal is
// blocked for this thread during the call and a SIGPIPE it raised is consumed. Thread-local
// and free of global side effects, unlike ignoring SIGPIPE process-wide.
ssize_t write_no_sigpipe(int fd, const void* data, std::size_t n) {
  sigset_t pipe_set, pending, old;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  sigpending(&pending);
  const bool was_pending = sigismember(&pending, SIGPIPE) == 1;
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  ssize_t r;
  do r = ::write(fd, data, n);
  while (r < 0 && errno == EINTR);
  const int saved = errno;
  if (r < 0 && saved == EPIPE && !was_pending) {
    const timespec zero{};
    while (sigtimedwait(&pipe_set, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  errno = saved;
  return r;
}

error_code errno_code(int e) { return {e, boost::system::system_category()}; }

}  // namespace

namespace detail {

struct reader_impl {
  reader_impl(const executor_type& ex, int fd, std::size_t max) : fd(ex, fd), max_line(max) {}
  asio::posix::stream_descriptor fd;
  std::unique_ptr<char[]> buf;  // allocated on the first read, so idle children cost nothing
  std::size_t cap = 0, begin = 0, end = 0;
  std::size_t scanned = 0;  // bytes after `begin` already known to hold no newline
  std::size_t max_line;
  bool eof = false;
  bool last_read_full = false;  // the previous read filled all the free space

  std::size_t buffered() const noexcept { return end - begin; }
};

struct writer_impl {
  writer_impl(const executor_type& ex, int fd) : fd(ex, fd) {}
  asio::posix::stream_descriptor fd;
};

}  // namespace detail

namespace {

using detail::reader_impl;
using reader_ptr = std::shared_ptr<reader_impl>;

// Makes room for at least one more byte at the end of the buffer, keeping the unread bytes.
// Growth is bounded: next_line() reports a line longer than max_line before it grows further.
void make_room(reader_impl& r) {
  if (!r.buf) {
    r.cap = initial_buffer;
    r.buf.reset(new char[r.cap]);
  }
  const std::size_t used = r.end - r.begin;
  if (used == 0) r.begin = r.end = 0;
  const bool grow = r.last_read_full && r.cap < max_read_buffer;
  r.last_read_full = false;
  if (!grow && r.end < r.cap) return;
  std::size_t cap = grow ? std::min(r.cap * 4, max_read_buffer) : r.cap;
  if (used >= cap / 2) cap = std::max(cap * 2, used + 1);  // a long line needs the room
  if (cap != r.cap) {
    auto nb = std::make_unique<char[]>(cap);
    std::memcpy(nb.get(), r.buf.get() + r.begin, used);
    r.buf = std::move(nb);
    r.cap = cap;
  } else {
    std::memmove(r.buf.get(), r.buf.get() + r.begin, used);
  }
  r.begin = 0;
  r.end = used;
}

enum class scan { line, need_more, too_long, eof_line, eof };

// Looks for the next complete line. On `line`/`eof_line`, [*b, *e) is the line.
scan next_line(reader_impl& r, const char** b, const char** e) {
  const char* base = r.buf ? r.buf.get() + r.begin : nullptr;
  const std::size_t avail = r.end - r.begin;
  if (avail > r.scanned) {
    if (auto* nl =
            static_cast<const char*>(std::memchr(base + r.scanned, '\n', avail - r.scanned))) {
      const std::size_t raw = static_cast<std::size_t>(nl - base);
      std::size_t len = raw;
      if (len > 0 && base[len - 1] == '\r') --len;
      if (len > r.max_line) return scan::too_long;  // the bytes stay buffered
      r.begin += raw + 1;
      r.scanned = 0;
      *b = base;
      *e = base + len;
      return scan::line;
    }
    r.scanned = avail;
  }
  if (avail > 0 && avail - 1 > r.max_line) return scan::too_long;  // room for a "\r"
  if (r.eof) {
    if (avail == 0) return scan::eof;
    r.begin = r.end;
    r.scanned = 0;
    *b = base;
    *e = base + avail;
    return scan::eof_line;
  }
  return scan::need_more;
}

// Reads more bytes into the buffer, then calls self(ec, n).
template <typename Self>
void fill(reader_impl& r, Self&& self) {
  make_room(r);
  r.fd.async_read_some(asio::buffer(r.buf.get() + r.end, r.cap - r.end), std::forward<Self>(self));
}

// Applies the result of fill(): true if the caller may scan again, false on error.
bool filled(reader_impl& r, error_code& ec, std::size_t n) {
  r.last_read_full = n > 0 && r.end + n == r.cap;
  r.end += n;
  if (ec == asio::error::eof) {
    r.eof = true;
    ec = {};
  }
  return !ec;
}

// Common shape of the operations: `waited` is false while still inside the initiating
// function, where completing is not allowed; such results go through post.
struct op_base {
  reader_ptr r;
  bool waited = false;
  bool posted = false;
  error_code result{};

  // Every cancellation type is safe: a cancelled operation consumes nothing.
  template <typename Self>
  static void accept_cancellation(Self& self) {
    self.reset_cancellation_state(asio::enable_total_cancellation());
  }
  // A cancellation that arrived while an inner read was already completing.
  template <typename Self>
  static bool cancelled(Self& self) {
    return self.cancelled() != asio::cancellation_type::none;
  }

  template <typename Self>
  void post_result(Self& self) {
    posted = true;
    asio::post(self.get_io_executor(), std::move(self));
  }
};

struct read_some_op : op_base {
  asio::mutable_buffer b;
  std::size_t bytes = 0;

  template <typename Self>
  void operator()(Self& self) {
    if (posted) return self.complete(result, bytes);
    if (!r) {
      result = make_error_code(errc::no_pipe);
    } else if (!r->fd.is_open() && r->buffered() == 0 && !r->eof) {
      result = asio::error::bad_descriptor;
    } else if (r->buffered() > 0) {
      bytes = std::min(b.size(), r->buffered());
      std::memcpy(b.data(), r->buf.get() + r->begin, bytes);
      r->begin += bytes;
      r->scanned = r->scanned > bytes ? r->scanned - bytes : 0;
    } else if (r->eof) {
      result = asio::error::eof;
    } else if (b.size() > 0) {
      waited = true;
      accept_cancellation(self);
      return r->fd.async_read_some(b, std::move(self));
    }
    post_result(self);
  }
  template <typename Self>
  void operator()(Self& self, error_code ec, std::size_t n) {
    if (ec == asio::error::eof) r->eof = true;
    self.complete(ec, n);
  }
};

struct read_line_op : op_base {
  std::optional<std::string> line{};

  template <typename Self>
  void operator()(Self& self) {
    if (posted) return self.complete(result, std::move(line));
    if (!r || (!r->fd.is_open() && !r->eof && r->buffered() == 0)) {
      result = r ? error_code(asio::error::bad_descriptor) : make_error_code(errc::no_pipe);
      return post_result(self);
    }
    if (scan_once()) return post_result(self);
    waited = true;
    accept_cancellation(self);
    fill(*r, std::move(self));
  }
  template <typename Self>
  void operator()(Self& self, error_code ec, std::size_t n) {
    if (!filled(*r, ec, n)) return self.complete(ec, std::nullopt);
    if (scan_once()) return self.complete(result, std::move(line));
    if (cancelled(self)) return self.complete(asio::error::operation_aborted, std::nullopt);
    fill(*r, std::move(self));
  }
  // True when the operation has its result.
  bool scan_once() {
    const char *b, *e;
    switch (next_line(*r, &b, &e)) {
      case scan::line:
      case scan::eof_line: line.emplace(b, e); return true;
      case scan::too_long: result = make_error_code(errc::line_too_long); return true;
      case scan::eof: return true;
      case scan::need_more: return false;
    }
    return true;
  }
};

struct for_each_op : op_base {
  std::function<void(std::string_view)> fn;
  std::size_t lines = 0;
  bool done = false;

  template <typename Self>
  void operator()(Self& self) {
    if (posted) return self.complete(result, lines);
    if (!r || (!r->fd.is_open() && !r->eof && r->buffered() == 0)) {
      result = r ? error_code(asio::error::bad_descriptor) : make_error_code(errc::no_pipe);
      return post_result(self);
    }
    drain();
    if (done) return post_result(self);
    waited = true;
    accept_cancellation(self);
    fill(*r, std::move(self));
  }
  template <typename Self>
  void operator()(Self& self, error_code ec, std::size_t n) {
    if (!filled(*r, ec, n)) return self.complete(ec, lines);
    drain();
    if (done) return self.complete(result, lines);
    if (cancelled(self)) return self.complete(asio::error::operation_aborted, lines);
    fill(*r, std::move(self));
  }
  void drain() {
    const char *b, *e;
    for (;;) {
      switch (next_line(*r, &b, &e)) {
        case scan::line:
        case scan::eof_line:
          ++lines;
          fn(std::string_view(b, static_cast<std::size_t>(e - b)));
          continue;
        case scan::too_long:
          result = make_error_code(errc::line_too_long);
          done = true;
          return;
        case scan::eof: done = true; return;
        case scan::need_more: return;
      }
    }
  }
};

struct read_all_op : op_base {
  std::size_t limit;
  std::string out{};

  template <typename Self>
  void operator()(Self& self) {
    if (posted) return self.complete(result, std::move(out));
    if (!r || (!r->fd.is_open() && !r->eof && r->buffered() == 0)) {
      result = r ? error_code(asio::error::bad_descriptor) : make_error_code(errc::no_pipe);
      return post_result(self);
    }
    if (take()) return post_result(self);
    waited = true;
    accept_cancellation(self);
    fill(*r, std::move(self));
  }
  template <typename Self>
  void operator()(Self& self, error_code ec, std::size_t n) {
    if (!filled(*r, ec, n)) {
      take();
      return self.complete(ec, std::move(out));
    }
    if (take()) return self.complete(result, std::move(out));
    if (cancelled(self)) return self.complete(asio::error::operation_aborted, std::move(out));
    fill(*r, std::move(self));
  }
  // Moves buffered bytes into `out`; true when finished.
  bool take() {
    const std::size_t avail = r->buffered();
    const std::size_t room = limit - out.size();
    const std::size_t n = std::min(avail, room);
    if (n > 0) out.append(r->buf.get() + r->begin, n);
    r->begin += n;
    r->scanned = 0;
    if (avail > room) {
      result = make_error_code(errc::output_limit_exceeded);
      return true;
    }
    return r->eof;
  }
};

struct write_op {
  std::shared_ptr<detail::writer_impl> w;
  asio::const_buffer b;
  std::size_t done = 0;
  bool waited = false;  // false while still inside the initiating function
  bool posted = false;
  error_code result{};

  template <typename Self>
  void operator()(Self& self, error_code ec = {}) {
    if (posted) return self.complete(result, done);
    if (ec) return self.complete(ec, done);
    if (!w)
      result = make_error_code(errc::no_pipe);
    else if (!w->fd.is_open())
      result = asio::error::bad_descriptor;
    while (!result && done < b.size()) {
      ssize_t n = write_no_sigpipe(w->fd.native_handle(), static_cast<const char*>(b.data()) + done,
                                   b.size() - done);
      if (n >= 0) {
        done += static_cast<std::size_t>(n);
      } else if (errno == EAGAIN) {
        if (!waited) self.reset_cancellation_state(asio::enable_total_cancellation());
        waited = true;
        w->fd.async_wait(asio::posix::descriptor_base::wait_write, std::move(self));
        return;
      } else {
        result = errno_code(errno);
      }
    }
    if (waited) return self.complete(result, done);
    posted = true;
    asio::post(self.get_io_executor(), std::move(self));
  }
};

// The I/O executor of an operation: the pipe's, or the system executor for a closed one.
executor_type io_executor(asio::posix::stream_descriptor* fd) {
  if (fd) return fd->get_executor();
  return asio::system_executor();
}

}  // namespace

// --- pipe_reader ---------------------------------------------------------------------

pipe_reader::pipe_reader(const executor_type& ex, int fd, std::size_t max_line)
    : p_(std::make_shared<detail::reader_impl>(ex, fd, max_line)) {}
pipe_reader::pipe_reader(pipe_reader&&) noexcept = default;
pipe_reader& pipe_reader::operator=(pipe_reader&& other) noexcept {
  if (this != &other) {
    close();
    p_ = std::move(other.p_);
  }
  return *this;
}
pipe_reader::~pipe_reader() { close(); }

executor_type pipe_reader::get_executor() const noexcept {
  return io_executor(p_ ? &p_->fd : nullptr);
}
bool pipe_reader::is_open() const noexcept { return p_ && p_->fd.is_open(); }
int pipe_reader::native_handle() const noexcept { return is_open() ? p_->fd.native_handle() : -1; }
bool pipe_reader::eof() const noexcept { return p_ && p_->eof; }
std::size_t pipe_reader::buffered() const noexcept { return p_ ? p_->buffered() : 0; }
void pipe_reader::set_max_line(std::size_t bytes) noexcept {
  if (p_) p_->max_line = bytes;
}
std::size_t pipe_reader::max_line() const noexcept {
  return p_ ? p_->max_line : std::size_t{1} << 20;
}

void pipe_reader::close() {
  if (!p_) return;
  error_code ignored;
  p_->fd.close(ignored);
}

void pipe_reader::start_read_some(asio::mutable_buffer b,
                                  asio::any_completion_handler<void(error_code, std::size_t)> h) {
  read_some_op op{{p_}, b};
  asio::async_compose<decltype(h), void(error_code, std::size_t)>(
      std::move(op), h, io_executor(p_ ? &p_->fd : nullptr));
}

void pipe_reader::start_read_line(
    asio::any_completion_handler<void(error_code, std::optional<std::string>)> h) {
  asio::async_compose<decltype(h), void(error_code, std::optional<std::string>)>(
      read_line_op{{p_}}, h, io_executor(p_ ? &p_->fd : nullptr));
}

asio::awaitable<std::optional<std::string>> pipe_reader::read_line_awaitable() {
  if (p_) {
    const char *b, *e;
    switch (next_line(*p_, &b, &e)) {
      case scan::line:
      case scan::eof_line: co_return std::string(b, e);
      case scan::eof: co_return std::nullopt;
      case scan::too_long:  // the general operation reports it
      case scan::need_more: break;
    }
  }
  co_return co_await asio::async_initiate<const asio::use_awaitable_t<>,
                                          void(error_code, std::optional<std::string>)>(
      [this](auto handler) { start_read_line(std::move(handler)); }, asio::use_awaitable);
}

void pipe_reader::start_read_all(std::size_t limit,
                                 asio::any_completion_handler<void(error_code, std::string)> h) {
  read_all_op op{{p_}, limit};
  asio::async_compose<decltype(h), void(error_code, std::string)>(
      std::move(op), h, io_executor(p_ ? &p_->fd : nullptr));
}

void pipe_reader::start_for_each_line(
    std::function<void(std::string_view)> fn,
    asio::any_completion_handler<void(error_code, std::size_t)> h) {
  for_each_op op{{p_}, std::move(fn)};
  asio::async_compose<decltype(h), void(error_code, std::size_t)>(
      std::move(op), h, io_executor(p_ ? &p_->fd : nullptr));
}

// --- pipe_writer ---------------------------------------------------------------------

pipe_writer::pipe_writer(const executor_type& ex, int fd)
    : p_(std::make_shared<detail::writer_impl>(ex, fd)) {
  error_code ignored;
  p_->fd.non_blocking(true, ignored);
}
pipe_writer::pipe_writer(pipe_writer&&) noexcept = default;
pipe_writer& pipe_writer::operator=(pipe_writer&& other) noexcept {
  if (this != &other) {
    close();
    p_ = std::move(other.p_);
  }
  return *this;
}
pipe_writer::~pipe_writer() { close(); }

executor_type pipe_writer::get_executor() const noexcept {
  return io_executor(p_ ? &p_->fd : nullptr);
}
bool pipe_writer::is_open() const noexcept { return p_ && p_->fd.is_open(); }
int pipe_writer::native_handle() const noexcept { return is_open() ? p_->fd.native_handle() : -1; }

void pipe_writer::close() {
  if (!p_) return;
  error_code ignored;
  p_->fd.close(ignored);
}

void pipe_writer::start_write(asio::const_buffer b,
                              asio::any_completion_handler<void(error_code, std::size_t)> h) {
  asio::async_compose<decltype(h), void(error_code, std::size_t)>(
      write_op{p_, b}, h, io_executor(p_ ? &p_->fd : nullptr));
}

}  // namespace coproc
