#include <coproc/pipe.hpp>

#include <boost/asio/compose.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/system_executor.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>

namespace coproc {

void unique_fd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

namespace detail {

namespace {
constexpr std::size_t header_size = 8;
constexpr std::size_t buffer_size = 64 * 1024;  // frames larger than this are read in place
constexpr std::size_t max_fds_per_read = 16;
constexpr std::uint64_t frame_limit = 0xffffffffu;

error_code errno_code(int e) { return {e, boost::system::system_category()}; }

struct header {
  std::uint32_t size;
  std::uint32_t tag;
};
}  // namespace

enum class got { frame, need_read, error };

struct connection_impl {
  connection_impl(const executor_type& ex, int fd, std::size_t max)
      : sock(ex), raw(fd), max_message(max), owner(::getpid()) {}
  ~connection_impl() {
    if (!sock.is_open() && raw >= 0) ::close(raw);  // never registered, never closed
  }

  // The descriptor joins the event loop (epoll) at the first async wait, not before: while
  // it is in an epoll set the kernel runs epoll's callback for every message that arrives,
  // which costs blocking-only use about 12% of its small-message throughput.
  asio::posix::stream_descriptor& watch() {
    if (!sock.is_open() && raw >= 0) {
      error_code ec;
      sock.assign(raw, ec);
      // Asio sets O_NONBLOCK (FIONBIO) before its first reactor operation, async_wait
      // included, unless it believes the descriptor is non-blocking already: tell it so, and
      // keep the file in blocking mode (the blocking calls wait in the kernel).
      if (!ec) sock.native_non_blocking(true, ec);
      const int fl = ::fcntl(raw, F_GETFL);
      if (fl >= 0 && (fl & O_NONBLOCK)) ::fcntl(raw, F_SETFL, fl & ~O_NONBLOCK);
      owner = ::getpid();
    }
    return sock;
  }
  bool is_open() const noexcept { return raw >= 0; }

  asio::posix::stream_descriptor sock;  // holds `raw` once registered (see watch())
  int raw;                              // the descriptor; -1 once closed or released
  std::size_t max_message;
  pid_t owner;  // the process whose event loop registered the descriptor
  bool can_send = true;
  bool can_receive = true;

  // Receive side. Bytes [begin, end) of buf are received and not yet consumed.
  std::unique_ptr<char[]> buf;
  std::size_t cap = 0, begin = 0, end = 0;
  bool eof = false;
  std::uint64_t skip = 0;     // bytes of an oversized message still to drop
  std::deque<unique_fd> fds;  // received descriptors, in arrival order
  bool big_active = false;    // a large frame is being read straight into `big`
  std::uint32_t big_tag = 0;
  std::size_t big_filled = 0;
  std::string big;

  // Send side: the blocking sends' reusable buffer.
  std::string send_buf;

  std::size_t buffered() const noexcept { return end - begin; }
  int fd() noexcept { return raw; }

  // The next frame with tag `want`. On got::frame either `view` (into the buffer, valid until
  // the next read) or `out.payload` (a large frame) holds the payload.
  got next(std::uint32_t want, std::string_view& view, frame& out, bool& owned, error_code& ec) {
    owned = false;
    if (skip) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(skip, buffered()));
      begin += n;
      skip -= n;
      if (skip) return eof ? (ec = asio::error::eof, got::error) : got::need_read;
    }
    if (big_active) {
      if (want != any_tag && want != big_tag)
        return ec = make_error_code(errc::type_mismatch), got::error;
      const std::size_t n = std::min(buffered(), big.size() - big_filled);
      if (n) std::memcpy(big.data() + big_filled, buf.get() + begin, n);
      begin += n;
      big_filled += n;
      if (big_filled == big.size()) {
        big_active = false;
        out.tag = big_tag;
        out.payload = std::move(big);
        big = std::string();
        owned = true;
        return got::frame;
      }
      if (eof) {
        big_active = false;
        big = std::string();
        return ec = asio::error::eof, got::error;
      }
      return got::need_read;
    }
    if (buffered() < header_size) {
      if (eof) return ec = asio::error::eof, got::error;
      return got::need_read;
    }
    header h;
    std::memcpy(&h, buf.get() + begin, header_size);
    if (h.tag == fd_tag) {
      if (want != fd_tag) return ec = make_error_code(errc::type_mismatch), got::error;
      begin += header_size;
      if (h.size != 0 || fds.empty())
        return ec = make_error_code(errc::malformed_message), got::error;
      out.tag = fd_tag;
      out.fd = std::move(fds.front());
      fds.pop_front();
      return got::frame;
    }
    if (want == fd_tag || (want != any_tag && h.tag != want))
      return ec = make_error_code(errc::type_mismatch), got::error;
    if (h.size > max_message) {
      begin += header_size;
      skip = h.size;
      return ec = make_error_code(errc::message_too_large), got::error;
    }
    if (buffered() - header_size >= h.size) {
      view = std::string_view(buf.get() + begin + header_size, h.size);
      begin += header_size + h.size;
      out.tag = h.tag;
      return got::frame;
    }
    if (eof) {
      begin = end;  // the partial message is dropped: every later receive sees end-of-stream
      return ec = asio::error::eof, got::error;
    }
    if (header_size + h.size <= buffer_size) {
      reserve_frame(header_size + h.size);
      return got::need_read;
    }
    {
      // Read the rest of a large frame straight into its own storage (no second copy).
      begin += header_size;
      big.resize(h.size);
      big_filled = 0;
      big_tag = h.tag;
      big_active = true;
      return next(want, view, out, owned, ec);
    }
  }

  // One recvmsg into the large frame and/or the buffer. 0 bytes: end-of-stream. Without
  // `block`, `ec` is would_block when nothing is there; with it, the call waits in the kernel
  // (one system call per wakeup), unless the descriptor itself is non-blocking.
  void read_some(error_code& ec, bool block = false) {
    if (!buf) {
      cap = buffer_size;
      buf.reset(new char[cap]);
    }
    if (begin == end) begin = end = 0;
    if (begin > 0 && cap - end < cap / 4) {  // keep reads large: few system calls
      std::memmove(buf.get(), buf.get() + begin, buffered());
      end -= begin;
      begin = 0;
    }
    iovec iov[2];
    int n_iov = 0;
    const std::size_t big_left = big_active ? big.size() - big_filled : 0;
    if (big_left) iov[n_iov++] = {big.data() + big_filled, big_left};
    // While a large frame is being filled, the buffer takes only what follows it.
    iov[n_iov++] = {buf.get() + end, cap - end};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds_per_read)];
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(n_iov);
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    const int flags = MSG_CMSG_CLOEXEC | (block ? 0 : MSG_DONTWAIT);
    do n = ::recvmsg(fd(), &msg, flags);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        ec = asio::error::would_block;
      else if (errno == ECONNRESET)
        eof = true;  // the peer died with unread data: end-of-stream all the same
      else
        ec = errno_code(errno);
      return;
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds.emplace_back(fd);
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) {
      ec = make_error_code(errc::malformed_message);  // descriptors beyond our limit were lost
      return;
    }
    if (n == 0) {
      eof = true;
      return;
    }
    std::size_t got_bytes = static_cast<std::size_t>(n);
    const std::size_t into_big = std::min(got_bytes, big_left);
    big_filled += into_big;
    end += got_bytes - into_big;
  }

  // Makes sure a frame of `total` bytes fits in the buffer from `begin`.
  void reserve_frame(std::size_t total) {
    if (begin + total <= cap) return;
    std::memmove(buf.get(), buf.get() + begin, buffered());
    end -= begin;
    begin = 0;
  }

  // Writes what it can of [data, data+size) without blocking (with `block`: all of it,
  // unless the descriptor itself is non-blocking); `done` advances.
  void write_some(const char* data, std::size_t size, std::size_t& done, error_code& ec,
                  bool block = false) {
    const int flags = MSG_NOSIGNAL | (block ? 0 : MSG_DONTWAIT);
    while (done < size) {
      const ssize_t n = ::send(fd(), data + done, size - done, flags);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
          ec = asio::error::would_block;
        else if (errno == EPIPE || errno == ECONNRESET)
          ec = asio::error::broken_pipe;
        else
          ec = errno_code(errno);
        return;
      }
      done += static_cast<std::size_t>(n);
    }
  }

  bool wait_for(short events, int timeout_ms, error_code& ec) {
    pollfd p{fd(), events, 0};
    int r;
    do r = ::poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r < 0) ec = errno_code(errno);
    return r > 0;
  }

  void check_send(const std::string& frame, error_code& ec) const {
    if (!is_open())
      ec = asio::error::bad_descriptor;
    else if (!can_send)
      ec = make_error_code(errc::wrong_direction);
    else if (frame.size() - header_size > std::min<std::uint64_t>(max_message, frame_limit))
      ec = make_error_code(errc::message_too_large);
  }

  void send_blocking(const char* data, std::size_t size, error_code& ec) {
    std::size_t done = 0;
    for (;;) {
      write_some(data, size, done, ec, true);
      if (ec != asio::error::would_block) return;
      ec = {};
      wait_for(POLLOUT, -1, ec);
      if (ec) return;
    }
  }

  // Blocking receive: loops over next() and read_some(), waiting with poll(2). Calls
  // on_frame(frame&, view, owned).
  template <typename OnFrame>
  void receive_blocking(std::uint32_t tag, OnFrame&& on_frame) {
    if (!is_open()) throw boost::system::system_error(asio::error::bad_descriptor, "receive");
    if (!can_receive)
      throw boost::system::system_error(make_error_code(errc::wrong_direction), "receive");
    for (;;) {
      std::string_view view;
      frame f;
      bool owned;
      error_code ec;
      switch (next(tag, view, f, owned, ec)) {
        case got::frame: return on_frame(f, view, owned);
        case got::error: throw boost::system::system_error(ec, "receive");
        case got::need_read: break;
      }
      read_some(ec, true);
      if (ec == asio::error::would_block) {  // a descriptor in O_NONBLOCK mode
        ec = {};
        wait_for(POLLIN, -1, ec);
      }
      if (ec) throw boost::system::system_error(ec, "receive");
    }
  }

  static void deliver(connection::payload_sink sink, void* ctx, frame& f, std::string_view view,
                      bool owned) {
    if (f.tag == fd_tag) {
      sink(ctx, f.tag, std::string_view(reinterpret_cast<const char*>(&f.fd), sizeof f.fd));
      return;
    }
    sink(ctx, f.tag, owned ? std::string_view(f.payload) : view);
  }
};

namespace {

using impl_ptr = std::shared_ptr<connection_impl>;

// Operations never complete inside their initiating function: results found there go
// through post. Every cancellation type is safe for a receive (nothing is consumed); a send
// that stops in the middle of a frame shuts the sending side down.
struct op_base {
  impl_ptr p;
  bool posted = false;
  error_code result{};

  template <typename Self>
  void post_result(Self& self) {
    posted = true;
    asio::post(self.get_io_executor(), std::move(self));
  }
  template <typename Self>
  static bool cancelled(Self& self) {
    return self.cancelled() != asio::cancellation_type::none;
  }
};

struct receive_op : op_base {
  std::uint32_t tag;
  frame f{};

  template <typename Self>
  void operator()(Self& self) {
    if (posted) return self.complete(result, std::move(f));
    if (!p || !p->is_open())
      result = asio::error::bad_descriptor;
    else if (!p->can_receive)
      result = make_error_code(errc::wrong_direction);
    else if (!attempt()) {
      self.reset_cancellation_state(asio::enable_total_cancellation());
      return p->watch().async_wait(asio::posix::descriptor_base::wait_read, std::move(self));
    }
    post_result(self);
  }
  template <typename Self>
  void operator()(Self& self, error_code ec) {
    if (!ec && cancelled(self)) ec = asio::error::operation_aborted;
    if (ec) return self.complete(ec, frame{});
    if (!attempt())
      return p->watch().async_wait(asio::posix::descriptor_base::wait_read, std::move(self));
    self.complete(result, std::move(f));
  }
  // True when the operation has its result (a frame or an error).
  bool attempt() {
    for (;;) {
      std::string_view view;
      bool owned;
      switch (p->next(tag, view, f, owned, result)) {
        case got::frame:
          if (!owned && f.tag != fd_tag) f.payload.assign(view);
          return true;
        case got::error: return true;
        case got::need_read: break;
      }
      p->read_some(result);
      if (result == asio::error::would_block) {
        result = {};
        return false;
      }
      if (result) return true;
    }
  }
};

// One descriptor frame: the header bytes carry the descriptor (SCM_RIGHTS).
void send_fd_once(connection_impl& c, int fd, std::size_t& done, error_code& ec) {
  const header h{0, fd_tag};
  char bytes[header_size];
  std::memcpy(bytes, &h, header_size);
  if (done == 0) {
    iovec iov{bytes, header_size};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    ssize_t n;
    do n = ::sendmsg(c.fd(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        ec = asio::error::would_block;
      else if (errno == EPIPE || errno == ECONNRESET)
        ec = asio::error::broken_pipe;
      else
        ec = errno_code(errno);
      return;
    }
    done = static_cast<std::size_t>(n);
  }
  c.write_some(bytes, header_size, done, ec);
}

// Drives a send until `Writer` has written everything: `check` before the first write,
// `step` writes what the socket takes (would_block: wait for room and step again).
template <typename Writer>
struct send_op : op_base {
  Writer w;

  template <typename Self>
  void operator()(Self& self) {
    if (posted) return self.complete(result);
    if (!p) {
      result = asio::error::bad_descriptor;
    } else {
      w.check(*p, result);
      if (!result) {
        w.step(*p, result);
        if (result == asio::error::would_block) {
          result = {};
          self.reset_cancellation_state(asio::enable_total_cancellation());
          return p->watch().async_wait(asio::posix::descriptor_base::wait_write, std::move(self));
        }
      }
    }
    post_result(self);
  }
  template <typename Self>
  void operator()(Self& self, error_code ec) {
    if (!ec && cancelled(self)) ec = asio::error::operation_aborted;
    if (!ec) {
      w.step(*p, ec);
      if (ec == asio::error::would_block)
        return p->watch().async_wait(asio::posix::descriptor_base::wait_write, std::move(self));
    }
    if (ec && w.torn() && p->is_open()) {
      // Part of a frame went out: the peer must see end-of-stream, not a torn message.
      ::shutdown(p->fd(), SHUT_WR);
      p->can_send = false;
    }
    self.complete(ec);
  }
};

struct frame_writer {
  std::string data;
  std::size_t done = 0;
  bool began = false;    // bytes of this frame were written before the operation started
  bool checked = false;  // check_send already passed (the header is filled in)
  void check(connection_impl& c, error_code& ec) {
    if (!checked) c.check_send(data, ec);
  }
  void step(connection_impl& c, error_code& ec) {
    c.write_some(data.data(), data.size(), done, ec);
  }
  bool torn() const { return (done > 0 || began) && done < data.size(); }
};

struct fd_writer {
  int fd;
  std::size_t done = 0;
  void check(connection_impl& c, error_code& ec) {
    if (!c.is_open())
      ec = asio::error::bad_descriptor;
    else if (!c.can_send)
      ec = make_error_code(errc::wrong_direction);
  }
  void step(connection_impl& c, error_code& ec) { send_fd_once(c, fd, done, ec); }
  bool torn() const { return done > 0 && done < header_size; }
};

template <typename Handler, typename Signature, typename Op>
void launch(Op op, Handler& h, const impl_ptr& p) {
  if (p)
    asio::async_compose<Handler, Signature>(std::move(op), h, p->sock);
  else
    asio::async_compose<Handler, Signature>(std::move(op), h, asio::system_executor());
}

void check_socket(int fd) {
  int type = 0, domain = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
    throw boost::system::system_error(errno_code(errno),
                                      "connection: descriptor " + std::to_string(fd));
  len = sizeof domain;
  ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len);
  if (type != SOCK_STREAM || domain != AF_UNIX)
    throw boost::system::system_error(
        make_error_code(boost::system::errc::wrong_protocol_type),
        "connection: descriptor " + std::to_string(fd) + " is not an AF_UNIX stream socket");
}

}  // namespace
}  // namespace detail

using detail::connection_impl;

connection::connection(const executor_type& ex, int fd, connection_options options) {
  detail::check_socket(fd);
  const int fl = ::fcntl(fd, F_GETFL);
  // Blocking mode: blocking calls then wait in the kernel, and the others pass MSG_DONTWAIT.
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0 || ::fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
    throw boost::system::system_error(detail::errno_code(errno), "connection");
  p_ = std::make_shared<connection_impl>(ex, fd, options.max_message_size);
}

connection::connection(connection&&) noexcept = default;
// Pending operations share the implementation: without an explicit close the descriptor
// would stay open (and they pending) for as long as they wait.
connection& connection::operator=(connection&& o) noexcept {
  if (this != &o) {
    close();
    p_ = std::move(o.p_);
  }
  return *this;
}
connection::~connection() { close(); }

connection::executor_type connection::get_executor() const noexcept {
  if (p_) return p_->sock.get_executor();
  return asio::system_executor();
}
bool connection::is_open() const noexcept { return p_ && p_->is_open(); }
// In a forked child the descriptor is registered with the parent's epoll instance, which the
// child shares: letting Asio deregister it there (it does for adopted descriptors) would
// remove the parent's registration too. So the child closes the descriptor itself first;
// Asio's deregistration then fails harmlessly on a closed number.
void connection::close() {
  if (!p_) return;
  if (p_->sock.is_open()) {
    if (::getpid() != p_->owner) ::close(p_->sock.native_handle());
    error_code ec;
    p_->sock.close(ec);
  } else if (p_->raw >= 0) {
    ::close(p_->raw);  // never registered with the event loop
  }
  p_->raw = -1;
  p_->can_send = p_->can_receive = false;
}
int connection::native_handle() const noexcept { return p_ ? p_->fd() : -1; }
int connection::release() {
  if (!p_ || !p_->is_open()) return -1;
  int fd;
  if (!p_->sock.is_open()) {
    fd = p_->raw;  // never registered
  } else if (::getpid() != p_->owner) {
    fd = ::fcntl(p_->sock.native_handle(), F_DUPFD_CLOEXEC, 0);  // see close()
    ::close(p_->sock.native_handle());
    error_code ec;
    p_->sock.close(ec);
  } else {
    fd = p_->sock.release();
  }
  p_->raw = -1;
  p_.reset();
  return fd;
}
bool connection::can_send() const noexcept { return is_open() && p_->can_send; }
bool connection::can_receive() const noexcept { return is_open() && p_->can_receive; }
std::size_t connection::max_message_size() const noexcept {
  return p_ ? p_->max_message : connection_options{}.max_message_size;
}
void connection::set_max_message_size(std::size_t n) {
  if (p_) p_->max_message = n;
}

void connection::throw_on_error(const error_code& ec, const char* what) {
  if (ec) throw boost::system::system_error(ec, what);
}

std::string connection::make_frame_buffer(std::uint32_t tag) {
  std::string b(detail::header_size, '\0');
  std::memcpy(b.data() + 4, &tag, 4);
  return b;
}

std::string& connection::begin_frame(std::uint32_t tag) {
  if (!p_) {
    static thread_local std::string scratch;
    scratch = make_frame_buffer(tag);
    return scratch;
  }
  auto& b = p_->send_buf;
  b.resize(detail::header_size);
  std::memcpy(b.data() + 4, &tag, 4);
  return b;
}

void connection::end_frame_and_send(error_code& ec) {
  if (!p_) {
    ec = asio::error::bad_descriptor;
    return;
  }
  send_frame(p_->send_buf, ec);
  if (p_->send_buf.capacity() > 1024 * 1024) p_->send_buf = std::string();  // don't hoard
}

void connection::send_frame(std::string& frame, error_code& ec) {
  ec = {};
  if (!p_) {
    ec = asio::error::bad_descriptor;
    return;
  }
  p_->check_send(frame, ec);
  if (ec) return;
  const auto size = static_cast<std::uint32_t>(frame.size() - detail::header_size);
  std::memcpy(frame.data(), &size, 4);
  p_->send_blocking(frame.data(), frame.size(), ec);
}

void connection::receive_into(std::uint32_t tag, payload_sink sink, void* context) {
  if (!p_) throw boost::system::system_error(asio::error::bad_descriptor, "receive");
  p_->receive_blocking(tag, [&](detail::frame& f, std::string_view view, bool owned) {
    connection_impl::deliver(sink, context, f, view, owned);
  });
}

bool connection::try_receive_into(std::uint32_t tag, payload_sink sink, void* context) {
  if (!p_ || !p_->is_open())
    throw boost::system::system_error(asio::error::bad_descriptor, "receive");
  if (!p_->can_receive)
    throw boost::system::system_error(make_error_code(errc::wrong_direction), "receive");
  for (int reads = 0;; ++reads) {
    std::string_view view;
    detail::frame f;
    bool owned;
    error_code ec;
    switch (p_->next(tag, view, f, owned, ec)) {
      case detail::got::frame: connection_impl::deliver(sink, context, f, view, owned); return true;
      case detail::got::error: throw boost::system::system_error(ec, "receive");
      case detail::got::need_read: break;
    }
    if (reads == 1) return false;  // one read per call: never loop on a trickle
    p_->read_some(ec);
    if (ec == asio::error::would_block) return false;
    if (ec) throw boost::system::system_error(ec, "receive");
  }
}

bool connection::poll(std::chrono::milliseconds timeout) {
  if (!p_ || !p_->is_open()) throw boost::system::system_error(asio::error::bad_descriptor, "poll");
  if (p_->buffered() > 0 || p_->eof || p_->big_active) return true;
  error_code ec;
  const auto ms =
      timeout.count() < 0 ? -1 : static_cast<int>(std::min<long long>(timeout.count(), 1 << 30));
  const bool ready = p_->wait_for(POLLIN, ms, ec);
  if (ec) throw boost::system::system_error(ec, "poll");
  return ready;
}

void connection::send_bytes(std::string_view data) {
  error_code ec;
  send_bytes(data, ec);
  throw_on_error(ec, "send_bytes");
}

void connection::send_bytes(std::string_view data, error_code& ec) {
  ec = {};
  if (!p_) {
    ec = asio::error::bad_descriptor;
    return;
  }
  if (data.size() > std::min<std::uint64_t>(p_->max_message, detail::frame_limit)) {
    ec = make_error_code(errc::message_too_large);
    return;
  }
  if (!p_->is_open()) {
    ec = asio::error::bad_descriptor;
    return;
  }
  if (!p_->can_send) {
    ec = make_error_code(errc::wrong_direction);
    return;
  }
  if (data.size() <= 4096) {  // small: one copy, one system call
    auto& b = begin_frame(detail::bytes_tag);
    b.append(data);
    return send_frame(b, ec);
  }
  // Large: header and payload gathered by one writev, no copy of the payload.
  const detail::header h{static_cast<std::uint32_t>(data.size()), detail::bytes_tag};
  std::size_t done = 0;
  const std::size_t total = detail::header_size + data.size();
  while (done < total) {
    iovec iov[2];
    int n_iov = 0;
    if (done < detail::header_size)
      iov[n_iov++] = {const_cast<char*>(reinterpret_cast<const char*>(&h)) + done,
                      detail::header_size - done};
    const std::size_t data_done = done > detail::header_size ? done - detail::header_size : 0;
    iov[n_iov++] = {const_cast<char*>(data.data()) + data_done, data.size() - data_done};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(n_iov);
    const ssize_t n = ::sendmsg(p_->fd(), &msg, MSG_NOSIGNAL);
    if (n >= 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      p_->wait_for(POLLOUT, -1, ec);
      if (ec) return;
      continue;
    }
    ec = errno == EPIPE || errno == ECONNRESET ? error_code(asio::error::broken_pipe)
                                               : detail::errno_code(errno);
    return;
  }
}

std::string connection::receive_bytes() {
  std::string out;
  receive_bytes(out);
  return out;
}

void connection::receive_bytes(std::string& out) {
  if (!p_) throw boost::system::system_error(asio::error::bad_descriptor, "receive_bytes");
  // A large message is read in place into the storage of `out`.
  const bool lend = !p_->big_active;
  if (lend) p_->big.swap(out);
  try {
    p_->receive_blocking(detail::bytes_tag,
                         [&](detail::frame& f, std::string_view view, bool owned) {
                           if (owned) {
                             out = std::move(f.payload);
                             return;
                           }
                           if (lend && !p_->big_active) p_->big.swap(out);
                           out.assign(view);
                         });
  } catch (...) {
    if (lend && !p_->big_active) p_->big.swap(out);
    throw;
  }
}

void connection::send_fd(int fd) {
  error_code ec;
  send_fd(fd, ec);
  throw_on_error(ec, "send_fd");
}

void connection::send_fd(int fd, error_code& ec) {
  ec = {};
  if (!p_ || !p_->is_open()) {
    ec = asio::error::bad_descriptor;
    return;
  }
  if (!p_->can_send) {
    ec = make_error_code(errc::wrong_direction);
    return;
  }
  std::size_t done = 0;
  for (;;) {
    detail::send_fd_once(*p_, fd, done, ec);
    if (ec != asio::error::would_block) return;
    ec = {};
    p_->wait_for(POLLOUT, -1, ec);
    if (ec) return;
  }
}

unique_fd connection::receive_fd() {
  unique_fd out;
  receive_into(
      detail::fd_tag,
      [](void* ctx, std::uint32_t, std::string_view payload) {
        auto* in = reinterpret_cast<unique_fd*>(const_cast<char*>(payload.data()));
        *static_cast<unique_fd*>(ctx) = std::move(*in);
      },
      &out);
  return out;
}

void connection::start_receive_frame(
    std::uint32_t tag, asio::any_completion_handler<void(error_code, detail::frame)> h) {
  detail::receive_op op{{p_}, tag};
  detail::launch<decltype(h), void(error_code, detail::frame)>(std::move(op), h, p_);
}

void connection::start_send_frame(std::string frame,
                                  asio::any_completion_handler<void(error_code)> h) {
  if (frame.size() >= detail::header_size) {
    const auto size = static_cast<std::uint32_t>(frame.size() - detail::header_size);
    std::memcpy(frame.data(), &size, 4);
  }
  detail::send_op<detail::frame_writer> op{{p_}, {std::move(frame)}};
  detail::launch<decltype(h), void(error_code)>(std::move(op), h, p_);
}

void connection::start_send_rest(std::string rest, bool began,
                                 asio::any_completion_handler<void(error_code)> h) {
  detail::send_op<detail::frame_writer> op{{p_}, {std::move(rest)}};
  op.w.began = began;
  op.w.checked = true;
  detail::launch<decltype(h), void(error_code)>(std::move(op), h, p_);
}

bool connection::try_flush(std::string& rest, bool& began, error_code& ec) {
  ec = {};
  if (!p_) {
    ec = asio::error::bad_descriptor;
    return false;
  }
  auto& frame = p_->send_buf;
  p_->check_send(frame, ec);
  if (ec) return false;
  const auto size = static_cast<std::uint32_t>(frame.size() - detail::header_size);
  std::memcpy(frame.data(), &size, 4);
  std::size_t done = 0;
  p_->write_some(frame.data(), frame.size(), done, ec);
  if (!ec) {
    if (frame.capacity() > 1024 * 1024) frame = std::string();  // don't hoard
    return true;
  }
  if (ec != asio::error::would_block) return false;
  ec = {};
  began = done > 0;
  if (done == 0) {
    rest.swap(frame);  // nothing went out: the whole frame, with its header
    return false;
  }
  rest.assign(frame, done);
  return false;
}

asio::awaitable<void> connection::send_awaitable() {
  std::string rest;
  bool began = false;
  error_code ec;
  if (try_flush(rest, began, ec)) co_return;
  if (ec) throw boost::system::system_error(ec, "send");
  co_await asio::async_initiate<const asio::use_awaitable_t<>, void(error_code)>(
      [this, began](auto handler, std::string r) {
        start_send_rest(std::move(r), began, std::move(handler));
      },
      asio::use_awaitable, std::move(rest));
}

void connection::start_send_fd(int fd, asio::any_completion_handler<void(error_code)> h) {
  detail::send_op<detail::fd_writer> op{{p_}, {fd}};
  detail::launch<decltype(h), void(error_code)>(std::move(op), h, p_);
}

std::pair<connection, connection> make_pipe(const executor_type& ex, pipe_options options) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    throw boost::system::system_error(detail::errno_code(errno), "make_pipe: socketpair");
  std::pair<connection, connection> ends;
  try {
    ends.first.p_ = std::make_shared<connection_impl>(ex, sv[0], options.max_message_size);
    sv[0] = -1;
    ends.second.p_ = std::make_shared<connection_impl>(ex, sv[1], options.max_message_size);
    sv[1] = -1;
  } catch (...) {
    if (sv[0] >= 0) ::close(sv[0]);
    if (sv[1] >= 0) ::close(sv[1]);
    throw;
  }
  if (!options.duplex) {
    ::shutdown(ends.first.native_handle(), SHUT_WR);
    ::shutdown(ends.second.native_handle(), SHUT_RD);
    ends.first.p_->can_send = false;
    ends.second.p_->can_receive = false;
  }
  return ends;
}

}  // namespace coproc
