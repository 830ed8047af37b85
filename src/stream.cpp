#include <coproc/stream.hpp>

#include <coproc/error.hpp>

#include <boost/asio/compose.hpp>
#include <boost/asio/post.hpp>

#include <pthread.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>

namespace coproc {
namespace {

constexpr std::size_t initial_buffer = 64 * 1024;

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

// Operations need the reader's private buffer; they live here rather than in the header.
struct reader_access {
  static void ensure_buffer(pipe_reader& r) {
    if (!r.buf_) {
      r.cap_ = std::max<std::size_t>(initial_buffer, 4096);
      r.buf_.reset(new char[r.cap_]);
    }
  }

  // Makes room for at least one more byte at the end of the buffer, keeping the unread
  // bytes. Growth is bounded by max_line (plus room for "\r\n").
  static void make_room(pipe_reader& r) {
    ensure_buffer(r);
    if (r.begin_ == r.end_) r.begin_ = r.end_ = 0;
    if (r.end_ < r.cap_) return;
    const std::size_t used = r.end_ - r.begin_;
    if (r.begin_ > 0 && used < r.cap_ / 2 + 1) {
      std::memmove(r.buf_.get(), r.buf_.get() + r.begin_, used);
    } else {
      std::size_t cap = std::max(r.cap_ * 2, used + 1);
      auto nb = std::make_unique<char[]>(cap);
      std::memcpy(nb.get(), r.buf_.get() + r.begin_, used);
      r.buf_ = std::move(nb);
      r.cap_ = cap;
    }
    r.begin_ = 0;
    r.end_ = used;
  }

  enum class scan { line, need_more, too_long, eof_line, eof };

  // Looks for the next complete line. On `line`/`eof_line`, [*b, *e) is the line.
  static scan next_line(pipe_reader& r, const char** b, const char** e) {
    const char* base = r.buf_ ? r.buf_.get() + r.begin_ : nullptr;
    const std::size_t avail = r.end_ - r.begin_;
    if (avail > r.scanned_) {
      if (auto* nl =
              static_cast<const char*>(std::memchr(base + r.scanned_, '\n', avail - r.scanned_))) {
        std::size_t len = static_cast<std::size_t>(nl - base);
        r.begin_ += len + 1;
        r.scanned_ = 0;
        if (len > 0 && base[len - 1] == '\r') --len;
        if (len > r.max_line_) {
          r.begin_ -= (static_cast<std::size_t>(nl - base) + 1);  // keep the bytes
          r.scanned_ = 0;
          return scan::too_long;
        }
        *b = base;
        *e = base + len;
        return scan::line;
      }
      r.scanned_ = avail;
    }
    if (avail > r.max_line_ + 1) return scan::too_long;
    if (r.eof_) {
      if (avail == 0) return scan::eof;
      std::size_t len = avail;
      r.begin_ = r.end_;
      r.scanned_ = 0;
      *b = base;
      *e = base + len;
      return scan::eof_line;
    }
    return scan::need_more;
  }

  // Reads more bytes into the buffer, then calls self(ec).
  template <typename Self>
  static void fill(pipe_reader& r, Self&& self) {
    make_room(r);
    r.fd_.async_read_some(asio::buffer(r.buf_.get() + r.end_, r.cap_ - r.end_),
                          std::forward<Self>(self));
  }

  // Applies the result of fill(): true if the caller may scan again, false on error.
  static bool filled(pipe_reader& r, error_code& ec, std::size_t n) {
    r.end_ += n;
    if (ec == asio::error::eof) {
      r.eof_ = true;
      ec = {};
    }
    return !ec;
  }

  struct read_some_op {
    pipe_reader* r;
    asio::mutable_buffer b;
    bool started = false;
    error_code result{};
    std::size_t bytes = 0;

    template <typename Self>
    void operator()(Self& self) {
      if (started) return self.complete(result, bytes);
      started = true;
      if (r->buffered() > 0 || r->eof_ || b.size() == 0 || !r->is_open()) {
        if (!r->is_open())
          result = asio::error::bad_descriptor;
        else if (b.size() == 0)
          bytes = 0;
        else if (r->buffered() == 0)
          result = asio::error::eof;
        else {
          bytes = std::min(b.size(), r->buffered());
          std::memcpy(b.data(), r->buf_.get() + r->begin_, bytes);
          r->begin_ += bytes;
          r->scanned_ = r->scanned_ > bytes ? r->scanned_ - bytes : 0;
        }
        return asio::post(self.get_io_executor(), std::move(self));
      }
      r->fd_.async_read_some(b, std::move(self));
    }
    template <typename Self>
    void operator()(Self& self, error_code ec, std::size_t n) {
      if (ec == asio::error::eof) r->eof_ = true;
      self.complete(ec, n);
    }
  };

  struct read_line_op {
    pipe_reader* r;
    bool started = false;
    error_code result{};
    std::optional<std::string> line{};

    template <typename Self>
    void operator()(Self& self) {
      if (started) return self.complete(result, std::move(line));
      started = true;
      if (!r->is_open() && !r->eof_) {
        result = asio::error::bad_descriptor;
        return asio::post(self.get_io_executor(), std::move(self));
      }
      if (scan_once()) return asio::post(self.get_io_executor(), std::move(self));
      fill(*r, std::move(self));
    }
    template <typename Self>
    void operator()(Self& self, error_code ec, std::size_t n) {
      if (!filled(*r, ec, n)) return self.complete(ec, std::nullopt);
      if (scan_once()) return self.complete(result, std::move(line));
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

  struct for_each_op {
    pipe_reader* r;
    std::function<void(std::string_view)> fn;
    std::size_t lines = 0;
    bool started = false;
    error_code result{};
    bool done = false;

    template <typename Self>
    void operator()(Self& self) {
      if (started) return self.complete(result, lines);
      started = true;
      if (!r->is_open() && !r->eof_) {
        result = asio::error::bad_descriptor;
        return asio::post(self.get_io_executor(), std::move(self));
      }
      drain();
      if (done) return asio::post(self.get_io_executor(), std::move(self));
      fill(*r, std::move(self));
    }
    template <typename Self>
    void operator()(Self& self, error_code ec, std::size_t n) {
      if (!filled(*r, ec, n)) return self.complete(ec, lines);
      drain();
      if (done) return self.complete(result, lines);
      fill(*r, std::move(self));
    }
    void drain() {
      const char *b, *e;
      for (;;) {
        switch (next_line(*r, &b, &e)) {
          case scan::line:
            ++lines;
            fn(std::string_view(b, static_cast<std::size_t>(e - b)));
            continue;
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

  struct read_all_op {
    pipe_reader* r;
    std::size_t limit;
    std::string out{};
    bool started = false;
    error_code result{};

    template <typename Self>
    void operator()(Self& self) {
      if (started) return self.complete(result, std::move(out));
      started = true;
      if (!r->is_open() && !r->eof_) {
        result = asio::error::bad_descriptor;
        return asio::post(self.get_io_executor(), std::move(self));
      }
      if (take()) return asio::post(self.get_io_executor(), std::move(self));
      fill(*r, std::move(self));
    }
    template <typename Self>
    void operator()(Self& self, error_code ec, std::size_t n) {
      if (!filled(*r, ec, n)) return self.complete(ec, std::move(out));
      if (take()) return self.complete(result, std::move(out));
      fill(*r, std::move(self));
    }
    // Moves buffered bytes into `out`; true when finished.
    bool take() {
      std::size_t avail = r->buffered();
      std::size_t room = limit - out.size();
      std::size_t n = std::min(avail, room);
      out.append(r->buf_ ? r->buf_.get() + r->begin_ : "", n);
      r->begin_ += n;
      r->scanned_ = 0;
      if (avail > room) {
        result = make_error_code(errc::output_limit_exceeded);
        return true;
      }
      return r->eof_;
    }
  };

  struct write_op {
    asio::posix::stream_descriptor* fd;
    asio::const_buffer b;
    std::size_t done = 0;
    bool waited = false;  // false while still inside the initiating function
    bool posted = false;
    error_code result{};

    template <typename Self>
    void operator()(Self& self, error_code ec = {}) {
      if (posted) return self.complete(result, done);
      if (ec) return self.complete(ec, done);
      if (!fd->is_open()) result = asio::error::bad_descriptor;
      while (!result && done < b.size()) {
        ssize_t n = write_no_sigpipe(fd->native_handle(), static_cast<const char*>(b.data()) + done,
                                     b.size() - done);
        if (n >= 0) {
          done += static_cast<std::size_t>(n);
        } else if (errno == EAGAIN) {
          waited = true;
          fd->async_wait(asio::posix::descriptor_base::wait_write, std::move(self));
          return;
        } else {
          result = errno_code(errno);
        }
      }
      if (!waited) {
        // Completing inside the initiating function is not allowed: go through post.
        posted = true;
        return asio::post(self.get_io_executor(), std::move(self));
      }
      self.complete(result, done);
    }
  };
};

// --- pipe_reader ---------------------------------------------------------------------

pipe_reader::pipe_reader(const executor_type& ex) : fd_(ex) {}
pipe_reader::pipe_reader(const executor_type& ex, int fd, std::size_t max_line)
    : fd_(ex, fd), max_line_(max_line) {}
pipe_reader::pipe_reader(pipe_reader&&) noexcept = default;
pipe_reader& pipe_reader::operator=(pipe_reader&&) noexcept = default;
pipe_reader::~pipe_reader() = default;

void pipe_reader::close() {
  error_code ignored;
  fd_.close(ignored);
}

void pipe_reader::start_read_some(asio::mutable_buffer b,
                                  asio::any_completion_handler<void(error_code, std::size_t)> h) {
  asio::async_compose<decltype(h), void(error_code, std::size_t)>(
      reader_access::read_some_op{this, b}, h, fd_);
}

void pipe_reader::start_read_line(
    asio::any_completion_handler<void(error_code, std::optional<std::string>)> h) {
  asio::async_compose<decltype(h), void(error_code, std::optional<std::string>)>(
      reader_access::read_line_op{this}, h, fd_);
}

void pipe_reader::start_read_all(std::size_t limit,
                                 asio::any_completion_handler<void(error_code, std::string)> h) {
  asio::async_compose<decltype(h), void(error_code, std::string)>(
      reader_access::read_all_op{this, limit}, h, fd_);
}

void pipe_reader::start_for_each_line(
    std::function<void(std::string_view)> fn,
    asio::any_completion_handler<void(error_code, std::size_t)> h) {
  asio::async_compose<decltype(h), void(error_code, std::size_t)>(
      reader_access::for_each_op{this, std::move(fn)}, h, fd_);
}

// --- pipe_writer ---------------------------------------------------------------------

pipe_writer::pipe_writer(const executor_type& ex) : fd_(ex) {}
pipe_writer::pipe_writer(const executor_type& ex, int fd) : fd_(ex, fd) {
  error_code ignored;
  fd_.non_blocking(true, ignored);
}
pipe_writer::pipe_writer(pipe_writer&&) noexcept = default;
pipe_writer& pipe_writer::operator=(pipe_writer&&) noexcept = default;
pipe_writer::~pipe_writer() = default;

void pipe_writer::close() {
  error_code ignored;
  fd_.close(ignored);
}

void pipe_writer::start_write(asio::const_buffer b,
                              asio::any_completion_handler<void(error_code, std::size_t)> h) {
  asio::async_compose<decltype(h), void(error_code, std::size_t)>(reader_access::write_op{&fd_, b},
                                                                  h, fd_);
}

}  // namespace coproc
