#include <coproc/pipe.hpp>

#include <coproc/child.hpp>
#include <coproc/error.hpp>

#include "fixture.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/steady_timer.hpp>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <system_error>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace coproc_test;
using namespace boost::asio::experimental::awaitable_operators;
using coproc::connection;
using coproc::errc;
using coproc::make_pipe;
using coproc::pipe_options;
using coproc::unique_fd;

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

struct point {
  int x = 0;
  double y = 0;
  std::string name;
  std::vector<int> values;
  bool operator==(const point&) const = default;
};

struct reply {
  std::string text;
  std::map<std::string, int> counts;
  std::optional<point> echo;
  bool operator==(const reply&) const = default;
};

template <typename T>
constexpr std::uint32_t tag_of = coproc::detail::type_tag<T>();

/// The error code of the `system_error` that `f()` throws; an empty code when it throws none.
template <typename F>
error_code error_of(F&& f) {
  try {
    f();
  } catch (const boost::system::system_error& e) {
    return e.code();
  }
  return {};
}

/// An 8-byte frame header as <coproc/pipe.hpp> writes it: payload size, then tag.
std::string frame_header(std::uint32_t size, std::uint32_t tag) {
  std::string h(8, '\0');
  std::memcpy(h.data(), &size, 4);
  std::memcpy(h.data() + 4, &tag, 4);
  return h;
}

/// Writes all of `data` on the (non-blocking) socket `fd`, bypassing the connection. Throws
/// rather than hang when the socket stays full for 30 s.
void write_raw(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, 30000) == 0) throw std::runtime_error("write_raw: the socket stays full");
      continue;
    }
    if (n < 0) throw std::system_error(errno, std::generic_category(), "write_raw");
    data.remove_prefix(static_cast<std::size_t>(n));
  }
}

/// Everything readable from `fd` up to end-of-file.
std::string read_to_end(int fd) {
  std::string all;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::system_error(errno, std::generic_category(), "read");
    if (n == 0) return all;
    all.append(buf, static_cast<std::size_t>(n));
  }
}

bool close_on_exec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

/// Resident set size of this process (/proc/self/statm).
std::size_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

std::vector<std::byte> byte_pattern(std::size_t n) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>(pattern_byte(i) ^ (i >> 8));
  return v;
}

/// A forked copy of this test process. The child closes its copy of `parent_end` (so the
/// parent's end sees end-of-stream exactly when the child's end is gone), runs `body` with
/// `child_end` (blocking calls only: the io_context is the parent's) and exits with what it
/// returns (99 when it throws, after naming the exception on stderr). The parent closes its
/// copy of `child_end`. Killed and reaped on destruction unless waited for.
class forked {
 public:
  template <typename Body>
  forked(connection& child_end, connection& parent_end, Body body) {
    pid_ = ::fork();
    if (pid_ < 0) throw std::system_error(errno, std::generic_category(), "fork");
    if (pid_ == 0) {
      ::close(parent_end.native_handle());
      int code = 98;
      try {
        code = body(child_end);
      } catch (const std::exception& e) {
        std::string msg = std::string("forked child: ") + e.what() + "\n";
        [[maybe_unused]] auto r = ::write(2, msg.data(), msg.size());
        code = 99;
      } catch (...) {
        code = 99;
      }
      ::_exit(code);
    }
    child_end.close();
  }
  forked(const forked&) = delete;
  forked& operator=(const forked&) = delete;
  ~forked() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  /// Blocks until the child has exited and reaps it: its exit code, 128 + signal if killed.
  int wait() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
};

/// Exit code of a child body: 0 when the next receive reports end-of-stream.
int expect_eof(connection& c) {
  try {
    c.receive<int>();
  } catch (const boost::system::system_error& e) {
    return e.code() == asio::error::eof ? 0 : 2;
  }
  return 3;
}

/// The error code that awaiting `a` throws as a `system_error`; empty when none.
asio::awaitable<error_code> awaited_error(asio::awaitable<void> a) {
  try {
    co_await std::move(a);
  } catch (const boost::system::system_error& e) {
    co_return e.code();
  }
  co_return error_code{};
}

class pipe_test : public io_test {};

// --- typed values ----------------------------------------------------------------------------

TEST_F(pipe_test, typed_values_round_trip_both_ways_on_a_duplex_pipe) {
  auto [a, b] = make_pipe(ex());
  EXPECT_TRUE(a.is_open() && a.can_send() && a.can_receive());
  EXPECT_TRUE(b.is_open() && b.can_send() && b.can_receive());

  const point p{-3, 2.5, "name", {1, 2, 3}};
  a.send(p);
  EXPECT_EQ(b.receive<point>(), p);

  const std::string with_nuls("a\0b\nc", 5);
  b.send(with_nuls);
  EXPECT_EQ(a.receive<std::string>(), with_nuls);

  const std::vector<std::string> words{"alpha", "", "gamma"};
  const reply r{"text", {{"a", 1}, {"b", 2}}, p};
  const std::vector<point> points{p, point{}, point{7, -1.0, "", {}}};
  const std::variant<int, std::string> var = std::string("variant");
  const std::tuple<int, std::string, double> tup{1, "two", 3.0};
  // Queued messages of several types arrive in order.
  b.send(words);
  b.send(r);
  b.send(points);
  b.send(var);
  b.send(tup);
  b.send(std::string());
  b.send(std::vector<int>());
  b.send(42);
  EXPECT_EQ(a.receive<std::vector<std::string>>(), words);
  EXPECT_EQ(a.receive<reply>(), r);
  EXPECT_EQ(a.receive<std::vector<point>>(), points);
  EXPECT_TRUE((a.receive<std::variant<int, std::string>>() == var));
  EXPECT_EQ((a.receive<std::tuple<int, std::string, double>>()), tup);
  EXPECT_EQ(a.receive<std::string>(), "");
  EXPECT_TRUE(a.receive<std::vector<int>>().empty());
  EXPECT_EQ(a.receive<int>(), 42);
  EXPECT_FALSE(a.poll());
  EXPECT_FALSE(b.poll());
}

TEST_F(pipe_test, one_way_pipe_refuses_the_wrong_direction) {
  auto [r, w] = make_pipe(ex(), pipe_options{.duplex = false});
  EXPECT_TRUE(r.can_receive());
  EXPECT_FALSE(r.can_send());
  EXPECT_TRUE(w.can_send());
  EXPECT_FALSE(w.can_receive());

  error_code ec;
  r.send(1, ec);
  EXPECT_EQ(ec, errc::wrong_direction);
  r.send_bytes("x", ec);
  EXPECT_EQ(ec, errc::wrong_direction);
  r.send_fd(0, ec);
  EXPECT_EQ(ec, errc::wrong_direction);
  EXPECT_EQ(error_of([&] { r.send(1); }), errc::wrong_direction);
  EXPECT_EQ(error_of([&] { w.receive<int>(); }), errc::wrong_direction);
  EXPECT_EQ(error_of([&] { w.try_receive<int>(); }), errc::wrong_direction);
  EXPECT_EQ(error_of([&] { w.receive_bytes(); }), errc::wrong_direction);
  EXPECT_EQ(error_of([&] { w.receive_fd(); }), errc::wrong_direction);

  auto errors = run([&]() -> asio::awaitable<std::vector<error_code>> {
    std::vector<error_code> out;
    std::tie(ec) = co_await r.async_send(1, tuple_awaitable);
    out.push_back(ec);
    std::tie(ec) = co_await r.async_send_bytes("x", tuple_awaitable);
    out.push_back(ec);
    std::tie(ec) = co_await r.async_send_fd(0, tuple_awaitable);
    out.push_back(ec);
    out.push_back(std::get<0>(co_await w.async_receive<int>(tuple_awaitable)));
    out.push_back(std::get<0>(co_await w.async_receive_bytes(tuple_awaitable)));
    out.push_back(std::get<0>(co_await w.async_receive_fd(tuple_awaitable)));
    out.push_back(co_await awaited_error(
        [&]() -> asio::awaitable<void> { co_await w.async_receive<int>(); }()));
    out.push_back(
        co_await awaited_error([&]() -> asio::awaitable<void> { co_await r.async_send(1); }()));
    co_return out;
  }());
  ASSERT_EQ(errors.size(), 8u);
  for (std::size_t i = 0; i < errors.size(); ++i)
    EXPECT_EQ(errors[i], errc::wrong_direction) << "operation " << i;

  // The right direction works, and nothing of the refused sends arrived.
  w.send(7);
  w.send_bytes("bytes");
  EXPECT_EQ(r.receive<int>(), 7);
  EXPECT_EQ(r.receive_bytes(), "bytes");
  EXPECT_FALSE(r.poll());
}

TEST_F(pipe_test, async_operations_with_callbacks_complete_through_the_executor) {
  auto [a, b] = make_pipe(ex());
  const point p{1, 0.5, "cb", {4}};
  std::optional<error_code> sent, sent_bytes;
  std::optional<std::pair<error_code, point>> got;
  std::optional<std::pair<error_code, std::string>> got_bytes;
  // The receives wait first; the sends then find room at once.
  b.async_receive<point>([&](error_code ec, point v) { got.emplace(ec, std::move(v)); });
  a.async_send(p, [&](error_code ec) { sent = ec; });
  // Nothing completes inside the initiating call, even with the result at hand.
  EXPECT_FALSE(sent);
  EXPECT_FALSE(got);
  ASSERT_TRUE(run_until([&] { return sent && got; }));
  EXPECT_FALSE(*sent);
  EXPECT_FALSE(got->first);
  EXPECT_EQ(got->second, p);

  // Message already there when the receive starts.
  a.async_send_bytes("raw", [&](error_code ec) { sent_bytes = ec; });
  ASSERT_TRUE(run_until([&] { return sent_bytes.has_value(); }));
  EXPECT_FALSE(*sent_bytes);
  b.async_receive_bytes([&](error_code ec, std::string s) { got_bytes.emplace(ec, std::move(s)); });
  EXPECT_FALSE(got_bytes);
  ASSERT_TRUE(run_until([&] { return got_bytes.has_value(); }));
  EXPECT_FALSE(got_bytes->first);
  EXPECT_EQ(got_bytes->second, "raw");
}

TEST_F(pipe_test, blocking_and_awaitable_forms_interoperate) {
  auto [a, b] = make_pipe(ex());
  const point p{9, 9.5, "aw", {1, 2}};
  a.send(p);
  a.send_bytes("bytes one");
  auto [v, bytes] = run([&]() -> asio::awaitable<std::pair<point, std::string>> {
    auto v = co_await b.async_receive<point>();  // already buffered
    auto bytes = co_await b.async_receive_bytes();
    co_await b.async_send(std::string("reply"));
    co_await b.async_send_bytes("bytes two");
    co_return std::pair{v, bytes};
  }());
  EXPECT_EQ(v, p);
  EXPECT_EQ(bytes, "bytes one");
  EXPECT_EQ(a.receive<std::string>(), "reply");
  EXPECT_EQ(a.receive_bytes(), "bytes two");

  // Awaiting a message that is not there yet suspends until it comes.
  auto late = run([&]() -> asio::awaitable<std::string> {
    co_return co_await (b.async_receive<std::string>() && [&]() -> asio::awaitable<void> {
      co_await asio::post(asio::use_awaitable);
      co_await a.async_send(std::string("late"));
    }());
  }());
  EXPECT_EQ(late, "late");
}

TEST_F(pipe_test, parent_and_forked_child_talk_both_ways) {
  auto [mine, theirs] = make_pipe(ex());
  forked child(theirs, mine, [](connection& c) {
    // Requests until end-of-stream; each gets a reply and a bytes message.
    for (;;) {
      point req;
      try {
        req = c.receive<point>();
      } catch (const boost::system::system_error& e) {
        return e.code() == asio::error::eof ? 0 : 2;
      }
      int sum = 0;
      for (int v : req.values) sum += v;
      c.send(reply{req.name + "!", {{req.name, sum}}, req});
      c.send_bytes(std::to_string(req.x));
    }
  });

  auto request = [](int i) {
    return point{i, i * 0.5, "req" + std::to_string(i), {i, i + 1, i + 2}};
  };
  auto expected = [&](int i) {
    return reply{
        "req" + std::to_string(i) + "!", {{"req" + std::to_string(i), 3 * i + 3}}, request(i)};
  };
  int bad = 0;
  for (int i = 0; i < 100; ++i) {
    mine.send(request(i));
    if (mine.receive<reply>() != expected(i)) ++bad;
    if (mine.receive_bytes() != std::to_string(i)) ++bad;
  }
  EXPECT_EQ(bad, 0);
  bad = run([&]() -> asio::awaitable<int> {
    int bad = 0;
    for (int i = 100; i < 200; ++i) {
      co_await mine.async_send(request(i));
      if (co_await mine.async_receive<reply>() != expected(i)) ++bad;
      if (co_await mine.async_receive_bytes() != std::to_string(i)) ++bad;
    }
    co_return bad;
  }());
  EXPECT_EQ(bad, 0);
  mine.close();
  EXPECT_EQ(child.wait(), 0);
}

// --- try_receive and poll --------------------------------------------------------------------

TEST_F(pipe_test, try_receive_is_empty_until_a_whole_message_is_there) {
  auto [a, b] = make_pipe(ex());
  EXPECT_EQ(b.try_receive<int>(), std::nullopt);
  a.send(5);
  a.send(6);
  EXPECT_EQ(b.try_receive<int>(), 5);
  EXPECT_EQ(b.try_receive<int>(), 6);
  EXPECT_EQ(b.try_receive<int>(), std::nullopt);

  // Half a message is not a message yet.
  const std::string whole = coproc::encode(std::string("split in two"));
  const std::string frame =
      frame_header(static_cast<std::uint32_t>(whole.size()), tag_of<std::string>) + whole;
  write_raw(a.native_handle(), std::string_view(frame).substr(0, 11));
  EXPECT_EQ(b.try_receive<std::string>(), std::nullopt);
  EXPECT_TRUE(b.poll()) << "part of a message is there";
  write_raw(a.native_handle(), std::string_view(frame).substr(11));
  EXPECT_EQ(b.try_receive<std::string>(), "split in two");
}

TEST_F(pipe_test, poll_with_zero_timeout_reports_whether_a_message_is_there) {
  auto [a, b] = make_pipe(ex());
  EXPECT_FALSE(b.poll());
  EXPECT_FALSE(b.poll(std::chrono::milliseconds(1)));
  a.send(std::string("x"));
  EXPECT_TRUE(b.poll());
  EXPECT_TRUE(b.poll()) << "polling consumes nothing";
  EXPECT_EQ(b.receive<std::string>(), "x");
  EXPECT_FALSE(b.poll());
  a.close();
  EXPECT_TRUE(b.poll()) << "end-of-stream is there to be received";
  EXPECT_EQ(error_of([&] { b.receive<int>(); }), asio::error::eof);
}

TEST_F(pipe_test, poll_with_a_timeout_returns_when_a_forked_child_sends) {
  auto [mine, theirs] = make_pipe(ex());
  forked child(theirs, mine, [](connection& c) {
    if (c.receive<std::string>() != "go") return 1;
    c.send(123);
    return expect_eof(c);
  });
  EXPECT_FALSE(mine.poll());
  mine.send(std::string("go"));
  EXPECT_TRUE(mine.poll(std::chrono::milliseconds(30000)));
  EXPECT_EQ(mine.receive<int>(), 123);
  mine.close();
  EXPECT_EQ(child.wait(), 0);
}

// --- errors on receive -----------------------------------------------------------------------

TEST_F(pipe_test, a_message_of_another_type_stays_queued) {
  auto [a, b] = make_pipe(ex());
  a.send(std::string("text"));
  EXPECT_EQ(error_of([&] { b.receive<int>(); }), errc::type_mismatch);
  EXPECT_EQ(error_of([&] { b.try_receive<point>(); }), errc::type_mismatch);
  EXPECT_EQ(error_of([&] { b.receive_bytes(); }), errc::type_mismatch);
  EXPECT_EQ(error_of([&] { b.receive_fd(); }), errc::type_mismatch);
  auto [ec, v] = run(b.async_receive<int>(tuple_awaitable));
  EXPECT_EQ(ec, errc::type_mismatch);
  EXPECT_EQ(error_of([&] { run(b.async_receive<double>()); }), errc::type_mismatch);
  EXPECT_EQ(b.receive<std::string>(), "text");

  // Bytes and descriptors stay queued too.
  a.send_bytes("bytes");
  EXPECT_EQ(error_of([&] { b.receive<std::string>(); }), errc::type_mismatch);
  EXPECT_EQ(b.receive_bytes(), "bytes");
  raw_pipe p;
  a.send_fd(p.read_end());
  EXPECT_EQ(error_of([&] { b.receive<int>(); }), errc::type_mismatch);
  EXPECT_EQ(error_of([&] { b.receive_bytes(); }), errc::type_mismatch);
  unique_fd fd = b.receive_fd();
  ASSERT_TRUE(fd);
  ASSERT_EQ(::write(p.write_end(), "via fd", 6), 6);
  p.close_write();
  EXPECT_EQ(read_to_end(fd.get()), "via fd");
}

TEST_F(pipe_test, undecodable_payload_is_malformed_and_the_next_message_arrives) {
  auto [a, b] = make_pipe(ex());
  auto send_garbage = [&](std::uint32_t tag, std::string_view payload) {
    std::string f = connection::make_frame_buffer(tag);
    f.append(payload);
    error_code ec;
    a.send_frame(f, ec);
    ASSERT_FALSE(ec) << ec.message();
  };
  // A string whose length prefix runs past the payload; a bool that is 2; trailing bytes.
  send_garbage(tag_of<std::string>, std::string("\x50\0\0\0\0\0\0\0abc", 11));
  a.send(std::string("after string"));
  send_garbage(tag_of<bool>, "\x02");
  a.send(true);
  send_garbage(tag_of<int>, "12345");
  a.send(5);

  EXPECT_EQ(error_of([&] { b.receive<std::string>(); }), errc::malformed_message);
  EXPECT_EQ(b.receive<std::string>(), "after string");
  EXPECT_EQ(error_of([&] { b.try_receive<bool>(); }), errc::malformed_message);
  EXPECT_EQ(b.try_receive<bool>(), true);
  auto [ec, v] = run(b.async_receive<int>(tuple_awaitable));
  EXPECT_EQ(ec, errc::malformed_message);
  EXPECT_EQ(run(b.async_receive<int>()), 5);

  // The awaitable form, both with the frame buffered and while waiting for it.
  send_garbage(tag_of<int>, "1");
  a.send(6);
  EXPECT_EQ(error_of([&] { run(b.async_receive<int>()); }), errc::malformed_message);
  EXPECT_EQ(run(b.async_receive<int>()), 6);
  std::optional<error_code> waited;
  asio::co_spawn(
      ctx(),
      [&]() -> asio::awaitable<void> {
        try {
          co_await b.async_receive<int>();
          waited.emplace();
        } catch (const boost::system::system_error& e) {
          waited = e.code();
        }
      },
      asio::detached);
  ctx().restart();
  ctx().poll();  // the coroutine starts and waits for the message
  EXPECT_FALSE(waited);
  send_garbage(tag_of<int>, "123");
  ASSERT_TRUE(run_until([&] { return waited.has_value(); }));
  EXPECT_EQ(*waited, errc::malformed_message);
  a.send(7);
  EXPECT_EQ(b.receive<int>(), 7);
}

TEST_F(pipe_test, frame_cut_short_by_close_is_end_of_stream) {
  for (bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "blocking");
    auto [a, b] = make_pipe(ex());
    write_raw(a.native_handle(),
              frame_header(100, coproc::detail::bytes_tag) + std::string(10, 'x'));
    a.close();
    if (async) {
      auto [ec, s] = run(b.async_receive_bytes(tuple_awaitable));
      EXPECT_EQ(ec, asio::error::eof);
      EXPECT_TRUE(s.empty());
    } else {
      EXPECT_EQ(error_of([&] { b.receive_bytes(); }), asio::error::eof);
    }
    // End-of-stream stays end-of-stream.
    EXPECT_EQ(error_of([&] { b.receive_bytes(); }), asio::error::eof);
    EXPECT_EQ(error_of([&] { b.try_receive<int>(); }), asio::error::eof);
  }
}

TEST_F(pipe_test, oversized_incoming_message_is_reported_then_skipped) {
  auto [a, b] = make_pipe(ex(), pipe_options{.max_message_size = 1024});
  EXPECT_EQ(b.max_message_size(), 1024u);
  // Written raw: the sender's own limit would refuse them.
  write_raw(a.native_handle(), frame_header(5000, tag_of<std::string>) + std::string(5000, 'x'));
  a.send(std::string("after one"));
  write_raw(a.native_handle(),
            frame_header(1025, coproc::detail::bytes_tag) + std::string(1025, 'y'));
  a.send_bytes(std::string(1024, 'z'));  // exactly the limit is fine

  EXPECT_EQ(error_of([&] { b.receive<std::string>(); }), errc::message_too_large);
  EXPECT_EQ(b.receive<std::string>(), "after one");
  auto [ec, s] = run(b.async_receive_bytes(tuple_awaitable));
  EXPECT_EQ(ec, errc::message_too_large);
  EXPECT_EQ(run(b.async_receive_bytes()), std::string(1024, 'z'));
  EXPECT_FALSE(b.poll());
}

TEST_F(pipe_test, oversized_messages_from_a_forked_child_are_skipped_across_many_reads) {
  auto [mine, theirs] = make_pipe(ex(), pipe_options{.max_message_size = 1 << 20});
  constexpr std::uint32_t big = 8u << 20;
  forked child(theirs, mine, [](connection& c) {
    for (int i = 0; i < 2; ++i) {
      write_raw(c.native_handle(), frame_header(big, coproc::detail::bytes_tag));
      write_raw(c.native_handle(), pattern(big));
      c.send(i);
    }
    return expect_eof(c);
  });
  EXPECT_EQ(error_of([&] { mine.receive_bytes(); }), errc::message_too_large);
  EXPECT_EQ(mine.receive<int>(), 0);
  auto [ec, s] = run(mine.async_receive_bytes(tuple_awaitable));
  EXPECT_EQ(ec, errc::message_too_large);
  EXPECT_EQ(run(mine.async_receive<int>()), 1);
  mine.close();
  EXPECT_EQ(child.wait(), 0);
}

// --- end of stream ---------------------------------------------------------------------------

TEST_F(pipe_test, peer_close_is_end_of_stream_after_the_queued_messages) {
  auto [a, b] = make_pipe(ex());
  a.send(1);
  a.send_bytes("last");
  a.close();
  EXPECT_FALSE(a.is_open());
  EXPECT_EQ(a.native_handle(), -1);
  EXPECT_EQ(b.receive<int>(), 1);
  EXPECT_EQ(b.receive_bytes(), "last");
  EXPECT_EQ(error_of([&] { b.receive<int>(); }), asio::error::eof);
  EXPECT_EQ(error_of([&] { b.receive_fd(); }), asio::error::eof);
  auto [ec, v] = run(b.async_receive<int>(tuple_awaitable));
  EXPECT_EQ(ec, asio::error::eof);
  EXPECT_EQ(error_of([&] { run(b.async_receive<int>()); }), asio::error::eof);
}

TEST_F(pipe_test, peer_close_while_an_async_receive_waits_is_end_of_stream) {
  auto [a, b] = make_pipe(ex());
  std::optional<error_code> got;
  b.async_receive<std::string>([&](error_code ec, std::string) { got = ec; });
  std::optional<error_code> got_fd;
  auto [c, d] = make_pipe(ex());
  d.async_receive_fd([&](error_code ec, unique_fd) { got_fd = ec; });
  ctx().restart();
  ctx().poll();
  EXPECT_FALSE(got);
  {
    connection gone = std::move(a);  // destroyed: the same as close
  }
  c.close();
  ASSERT_TRUE(run_until([&] { return got && got_fd; }));
  EXPECT_EQ(*got, asio::error::eof);
  EXPECT_EQ(*got_fd, asio::error::eof);
}

TEST_F(pipe_test, peer_death_in_the_middle_of_a_message_is_end_of_stream) {
  for (bool async : {false, true}) {
    for (std::uint32_t size : {100u, 1u << 20}) {  // buffered, and read in place
      SCOPED_TRACE(std::string(async ? "async " : "blocking ") + std::to_string(size));
      auto [mine, theirs] = make_pipe(ex());
      forked child(theirs, mine, [size](connection& c) {
        c.send(std::string("whole"));
        write_raw(c.native_handle(), frame_header(size, tag_of<std::string>));
        write_raw(c.native_handle(), std::string(size / 2, 'h'));
        ::_exit(0);  // with half a message out
        return 0;
      });
      EXPECT_EQ(mine.receive<std::string>(), "whole");
      if (async) {
        auto [ec, s] = run(mine.async_receive<std::string>(tuple_awaitable));
        EXPECT_EQ(ec, asio::error::eof);
      } else {
        EXPECT_EQ(error_of([&] { mine.receive<std::string>(); }), asio::error::eof);
      }
      EXPECT_EQ(child.wait(), 0);
    }
  }
}

TEST_F(pipe_test, send_after_the_peer_closed_is_broken_pipe_without_sigpipe) {
  // SIGPIPE at its default action: a send that raised it would kill the test.
  struct sigaction dfl {
  }, old{};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGPIPE, &dfl, &old);

  auto [a, b] = make_pipe(ex());
  b.close();
  error_code ec;
  a.send(1, ec);
  EXPECT_EQ(ec, asio::error::broken_pipe);
  EXPECT_EQ(error_of([&] { a.send(std::string("x")); }), asio::error::broken_pipe);
  a.send_bytes("small", ec);
  EXPECT_EQ(ec, asio::error::broken_pipe);
  a.send_bytes(std::string(100000, 'l'), ec);  // the gathered-write path
  EXPECT_EQ(ec, asio::error::broken_pipe);
  a.send_fd(0, ec);
  EXPECT_EQ(ec, asio::error::broken_pipe);
  auto errors = run([&]() -> asio::awaitable<std::array<error_code, 4>> {
    std::array<error_code, 4> out;
    std::tie(out[0]) = co_await a.async_send(1, tuple_awaitable);
    std::tie(out[1]) = co_await a.async_send_bytes(std::string(100000, 'l'), tuple_awaitable);
    std::tie(out[2]) = co_await a.async_send_fd(0, tuple_awaitable);
    out[3] = co_await awaited_error(
        [&]() -> asio::awaitable<void> { co_await a.async_send(std::string("awaited")); }());
    co_return out;
  }());
  for (const auto& e : errors) EXPECT_EQ(e, asio::error::broken_pipe);

  ::sigaction(SIGPIPE, &old, nullptr);
}

TEST_F(pipe_test, send_blocked_on_a_full_socket_fails_when_the_peer_dies) {
  struct sigaction dfl {
  }, old{};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGPIPE, &dfl, &old);
  for (bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "blocking");
    auto [mine, theirs] = make_pipe(ex());
    forked child(theirs, mine, [](connection& c) {
      c.poll(std::chrono::milliseconds(-1));  // the first bytes of the parent's message
      ::_exit(0);                             // then die without reading it
      return 0;
    });
    const std::string big(32u << 20, 'b');
    if (async) {
      auto [ec] = run(mine.async_send_bytes(big, tuple_awaitable));
      EXPECT_EQ(ec, asio::error::broken_pipe);
    } else {
      error_code ec;
      mine.send_bytes(big, ec);
      EXPECT_EQ(ec, asio::error::broken_pipe);
    }
    EXPECT_EQ(child.wait(), 0);
  }
  ::sigaction(SIGPIPE, &old, nullptr);
}

// --- limits on send --------------------------------------------------------------------------

TEST_F(pipe_test, outgoing_message_over_the_limit_is_not_sent) {
  auto [a, b] = make_pipe(ex(), pipe_options{.max_message_size = 64});
  EXPECT_EQ(a.max_message_size(), 64u);
  error_code ec;
  a.send(std::string(100, 'x'), ec);
  EXPECT_EQ(ec, errc::message_too_large);
  EXPECT_EQ(error_of([&] { a.send(std::vector<int>(100)); }), errc::message_too_large);
  a.send_bytes(std::string(65, 'y'), ec);
  EXPECT_EQ(ec, errc::message_too_large);
  auto errors = run([&]() -> asio::awaitable<std::array<error_code, 3>> {
    auto [e1] = co_await a.async_send(std::string(100, 'x'), tuple_awaitable);
    auto [e2] = co_await a.async_send_bytes(std::string(65, 'y'), tuple_awaitable);
    auto e3 = co_await awaited_error(
        [&]() -> asio::awaitable<void> { co_await a.async_send(std::string(100, 'x')); }());
    co_return std::array{e1, e2, e3};
  }());
  for (const auto& e : errors) EXPECT_EQ(e, errc::message_too_large);
  EXPECT_FALSE(b.poll()) << "no byte of a refused message went out";

  a.send_bytes(std::string(64, 'z'));
  a.send(std::string("ok"));
  EXPECT_EQ(b.receive_bytes(), std::string(64, 'z'));
  EXPECT_EQ(b.receive<std::string>(), "ok");

  // Large payloads take another path through send_bytes.
  a.set_max_message_size(1 << 20);
  b.set_max_message_size(1 << 20);
  a.send_bytes(std::string((1 << 20) + 1, 'L'), ec);
  EXPECT_EQ(ec, errc::message_too_large);
  EXPECT_FALSE(b.poll());
  a.send(std::string("still ok"));
  EXPECT_EQ(b.receive<std::string>(), "still ok");
}

// --- large and many messages -----------------------------------------------------------------

TEST_F(pipe_test, hundred_megabytes_both_ways_with_a_forked_child) {
  constexpr std::size_t size = 100u << 20;
  auto [mine, theirs] = make_pipe(ex(), pipe_options{.max_message_size = 128u << 20});
  forked child(theirs, mine, [](connection& c) {
    const std::string data = pattern(size);
    c.send_bytes(data);
    c.send_bytes(data);
    std::string back;
    c.receive_bytes(back);
    if (back != data) return 1;
    return expect_eof(c);
  });
  std::string got = mine.receive_bytes();
  EXPECT_EQ(got.size(), size);
  EXPECT_EQ(pattern_mismatch(got), std::string::npos);
  std::string second = run(mine.async_receive_bytes());
  EXPECT_EQ(second.size(), size);
  EXPECT_TRUE(second == got);
  second = std::string();
  mine.send_bytes(got);
  mine.close();
  EXPECT_EQ(child.wait(), 0);
}

TEST_F(pipe_test, ten_megabyte_byte_vector_as_a_typed_value) {
  const std::vector<std::byte> v = byte_pattern(10u << 20);
  {
    // One process: an async send and an async receive progress together.
    auto [a, b] = make_pipe(ex());
    auto got = run([&]() -> asio::awaitable<std::vector<std::byte>> {
      co_return co_await (a.async_send(v) && b.async_receive<std::vector<std::byte>>());
    }());
    EXPECT_TRUE(got == v);
  }
  // With a forked child: blocking there, blocking and async here.
  auto [mine, theirs] = make_pipe(ex());
  forked child(theirs, mine, [&v](connection& c) {
    c.send(v);
    if (c.receive<std::vector<std::byte>>() != v) return 1;
    return expect_eof(c);
  });
  auto got = mine.receive<std::vector<std::byte>>();
  EXPECT_TRUE(got == v);
  run(mine.async_send(got));
  mine.close();
  EXPECT_EQ(child.wait(), 0);
}

TEST_F(pipe_test, frames_of_every_size_around_the_buffer_size_arrive_intact) {
  std::vector<std::size_t> sizes{0, 1, 7, 8, 9, 100, 4095, 4096, 4097, 32768};
  for (std::size_t s = 65536 - 40; s <= 65536 + 8; ++s) sizes.push_back(s);
  for (std::size_t s : {70000, 131072, 1 << 20}) sizes.push_back(s);
  auto [mine, theirs] = make_pipe(ex());
  forked child(theirs, mine, [&sizes](connection& c) {
    for (int round = 0; round < 3; ++round) {
      std::uint64_t offset = 0;
      for (std::size_t s : sizes) {
        // Typed strings and bytes alternate; small ones in between shift the alignment.
        c.send(pattern(s, offset));
        c.send_bytes(pattern(s, offset + 1));
        c.send(static_cast<std::uint8_t>(s));
        offset += s;
      }
    }
    return expect_eof(c);
  });
  int bad = 0;
  // Round 0 blocking, round 1 awaitable, round 2 blocking into one reused string.
  std::uint64_t offset = 0;
  for (std::size_t s : sizes) {
    if (mine.receive<std::string>() != pattern(s, offset)) ++bad;
    if (mine.receive_bytes() != pattern(s, offset + 1)) ++bad;
    if (mine.receive<std::uint8_t>() != static_cast<std::uint8_t>(s)) ++bad;
    offset += s;
  }
  EXPECT_EQ(bad, 0);
  bad = run([&]() -> asio::awaitable<int> {
    int bad = 0;
    std::uint64_t offset = 0;
    for (std::size_t s : sizes) {
      if (co_await mine.async_receive<std::string>() != pattern(s, offset)) ++bad;
      if (co_await mine.async_receive_bytes() != pattern(s, offset + 1)) ++bad;
      if (co_await mine.async_receive<std::uint8_t>() != static_cast<std::uint8_t>(s)) ++bad;
      offset += s;
    }
    co_return bad;
  }());
  EXPECT_EQ(bad, 0);
  offset = 0;
  std::string bytes;
  for (std::size_t s : sizes) {
    if (mine.receive<std::string>() != pattern(s, offset)) ++bad;
    mine.receive_bytes(bytes);
    if (bytes != pattern(s, offset + 1)) ++bad;
    if (mine.receive<std::uint8_t>() != static_cast<std::uint8_t>(s)) ++bad;
    offset += s;
  }
  EXPECT_EQ(bad, 0);
  mine.close();
  EXPECT_EQ(child.wait(), 0);
}

TEST_F(pipe_test, receive_bytes_into_a_string_reuses_its_capacity) {
  const std::vector<std::size_t> sizes{10, 1000, 60000, 300000, 2u << 20, 100};
  auto [mine, theirs] = make_pipe(ex());
  forked child(theirs, mine, [&sizes](connection& c) {
    for (std::size_t s : sizes) c.send_bytes(pattern(s, s));
    return expect_eof(c);
  });
  std::string out;
  out.reserve(4u << 20);
  const char* storage = out.data();
  for (std::size_t s : sizes) {
    mine.receive_bytes(out);
    EXPECT_EQ(out.size(), s);
    EXPECT_EQ(pattern_mismatch(out, s), std::string::npos) << "size " << s;
    EXPECT_EQ(static_cast<const void*>(out.data()), static_cast<const void*>(storage))
        << "size " << s;
  }
  mine.close();
  EXPECT_EQ(child.wait(), 0);
}

// Fewer under the sanitizers, whose allocators make the memory check meaningless (and
// whose cost makes a million callbacks take a minute under ThreadSanitizer).
constexpr std::uint32_t many = sanitized ? 250'000 : 1'000'000;
constexpr std::uint32_t warmed = 100'000;

/// A forked child sending the numbers 0..many-1 as typed messages, then closing.
int send_many(connection& c) {
  for (std::uint32_t i = 0; i < many; ++i) c.send(i);
  return 0;
}

/// Memory of the receiver after `warmed` messages and after all of them.
struct growth {
  std::size_t at_warmed = 0, at_end = 0;
  std::uint32_t received = 0, out_of_order = 0;
};

void expect_no_growth(const growth& g) {
  EXPECT_EQ(g.received, many);
  EXPECT_EQ(g.out_of_order, 0u);
  const auto diff = static_cast<long long>(g.at_end) - static_cast<long long>(g.at_warmed);
  if (sanitized) {
    // The sanitizers' allocators keep freed memory in quarantine: RSS says nothing there.
    std::printf("resident memory after %u and %u messages: %zu and %zu bytes\n", warmed, many,
                g.at_warmed, g.at_end);
    return;
  }
  EXPECT_LT(diff, 4 << 20) << "resident memory grew from " << g.at_warmed << " to " << g.at_end
                           << " bytes";
  EXPECT_GT(diff, -(4 << 20));
}

void count(growth& g, std::uint32_t v) {
  if (v != g.received) ++g.out_of_order;
  if (++g.received == warmed) g.at_warmed = resident_bytes();
}

TEST_F(pipe_test, a_million_small_messages_blocking_without_memory_growth) {
  auto [mine, theirs] = make_pipe(ex());
  forked child(theirs, mine, send_many);
  growth g;
  for (std::uint32_t i = 0; i < many; ++i) count(g, mine.receive<std::uint32_t>());
  g.at_end = resident_bytes();
  expect_no_growth(g);
  EXPECT_EQ(error_of([&] { mine.receive<std::uint32_t>(); }), asio::error::eof);
  EXPECT_EQ(child.wait(), 0);
}

TEST_F(pipe_test, a_million_small_messages_awaited_without_memory_growth) {
  auto [mine, theirs] = make_pipe(ex());
  forked child(theirs, mine, send_many);
  auto [g, end] = run(
      [&]() -> asio::awaitable<std::pair<growth, error_code>> {
        growth g;
        for (std::uint32_t i = 0; i < many; ++i)
          count(g, co_await mine.async_receive<std::uint32_t>());
        g.at_end = resident_bytes();
        auto [ec, v] = co_await mine.async_receive<std::uint32_t>(tuple_awaitable);
        co_return std::pair{g, ec};
      }(),
      110s);
  expect_no_growth(g);
  EXPECT_EQ(end, asio::error::eof);
  EXPECT_EQ(child.wait(), 0);
}

TEST_F(pipe_test, a_million_small_messages_with_callbacks_without_memory_growth) {
  auto [mine, theirs] = make_pipe(ex());
  forked child(theirs, mine, send_many);
  struct receiver {
    connection& c;
    growth g;
    std::optional<error_code> end;
    void start() {
      c.async_receive<std::uint32_t>([this](error_code ec, std::uint32_t v) {
        if (ec) {
          end = ec;
          return;
        }
        count(g, v);
        if (g.received == many) g.at_end = resident_bytes();
        start();
      });
    }
  } r{mine, {}, {}};
  r.start();
  ASSERT_TRUE(run_until([&] { return r.end.has_value(); }, 110s));
  expect_no_growth(r.g);
  EXPECT_EQ(*r.end, asio::error::eof);
  EXPECT_EQ(child.wait(), 0);
}

// --- descriptors -----------------------------------------------------------------------------

TEST_F(pipe_test, a_pipe_and_a_file_passed_to_a_forked_child_are_readable_there) {
  temp_dir dir;
  write_file(dir / "f", "file contents");
  auto [mine, theirs] = make_pipe(ex());
  forked child(theirs, mine, [](connection& c) {
    for (int i = 0; i < 2; ++i) {
      unique_fd fd = c.receive_fd();
      if (!fd) return 1;
      if (!close_on_exec(fd.get())) return 2;
      c.send(read_to_end(fd.get()));
    }
    return expect_eof(c);
  });
  // Made after the fork: the child has no copy of its write end, so it reads to end-of-file.
  raw_pipe p;
  {
    const std::string text = "through the pipe";
    ASSERT_EQ(::write(p.write_end(), text.data(), text.size()), static_cast<ssize_t>(text.size()));
  }
  p.close_write();
  mine.send_fd(p.read_end());
  p.close_read();
  const int file = ::open((dir / "f").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(file, 0);
  run(mine.async_send_fd(file));
  ::close(file);
  EXPECT_EQ(mine.receive<std::string>(), "through the pipe");
  EXPECT_EQ(run(mine.async_receive<std::string>()), "file contents");
  mine.close();
  EXPECT_EQ(child.wait(), 0);
}

TEST_F(pipe_test, descriptor_from_a_forked_child_is_close_on_exec_and_readable) {
  auto [mine, theirs] = make_pipe(ex());
  forked child(theirs, mine, [](connection& c) {
    int fds[2];
    if (::pipe(fds) != 0) return 1;  // not close-on-exec here
    c.send_fd(fds[0]);
    ::close(fds[0]);
    const std::string text = "from the child";
    if (::write(fds[1], text.data(), text.size()) != static_cast<ssize_t>(text.size())) return 2;
    ::close(fds[1]);
    return expect_eof(c);
  });
  unique_fd fd = run(mine.async_receive_fd());
  ASSERT_TRUE(fd);
  EXPECT_TRUE(close_on_exec(fd.get()));
  EXPECT_EQ(read_to_end(fd.get()), "from the child");
  fd.reset();
  mine.close();
  EXPECT_EQ(child.wait(), 0);
}

TEST_F(pipe_test, descriptors_and_messages_keep_their_order) {
  temp_dir dir;
  auto [a, b] = make_pipe(ex());
  std::vector<int> files;
  for (int i = 0; i < 5; ++i) {
    const auto path = dir / ("f" + std::to_string(i));
    write_file(path, "file " + std::to_string(i));
    files.push_back(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_GE(files.back(), 0);
  }
  for (int i = 0; i < 5; ++i) {
    a.send(i);
    a.send_fd(files[static_cast<std::size_t>(i)]);
    a.send_fd(files[static_cast<std::size_t>(i)]);
  }
  for (int f : files) ::close(f);
  auto [bad, async_bad] = run([&]() -> asio::awaitable<std::pair<int, int>> {
    int bad = 0, async_bad = 0;
    for (int i = 0; i < 5; ++i) {
      if (b.receive<int>() != i) ++bad;
      unique_fd fd = b.receive_fd();
      if (!close_on_exec(fd.get()) || read_to_end(fd.get()) != "file " + std::to_string(i)) ++bad;
      // The second copy is the same open file (offset at its end now): compare inodes.
      unique_fd again = co_await b.async_receive_fd();
      struct stat s1 {
      }, s2{};
      ::fstat(fd.get(), &s1);
      ::fstat(again.get(), &s2);
      if (s1.st_ino != s2.st_ino || !close_on_exec(again.get())) ++async_bad;
    }
    co_return std::pair{bad, async_bad};
  }());
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(async_bad, 0);
}

TEST_F(pipe_test, descriptors_never_received_are_closed_with_the_connection) {
  raw_pipe p;
  {
    auto [a, b] = make_pipe(ex());
    a.send_fd(p.read_end());
    a.send(1);
    EXPECT_EQ(error_of([&] { b.receive<int>(); }), errc::type_mismatch);
    EXPECT_TRUE(b.poll());
  }
  // The fixture's descriptor check fails if the received copy is still open; and with
  // every read end closed, writing to the pipe fails.
  struct sigaction ign {
  }, old{};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ign, &old);
  p.close_read();
  const ssize_t n = ::write(p.write_end(), "x", 1);
  const int err = errno;
  EXPECT_EQ(n, -1);
  EXPECT_EQ(err, EPIPE);
  ::sigaction(SIGPIPE, &old, nullptr);
}

// --- cancellation and close ------------------------------------------------------------------

TEST_F(pipe_test, cancelled_receive_completes_with_operation_aborted_and_loses_nothing) {
  auto [a, b] = make_pipe(ex());
  for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                    asio::cancellation_type::total}) {
    SCOPED_TRACE(static_cast<int>(type));
    asio::cancellation_signal sig;
    std::optional<std::pair<error_code, int>> got;
    b.async_receive<int>(asio::bind_cancellation_slot(
        sig.slot(), [&](error_code ec, int v) { got.emplace(ec, v); }));
    ctx().restart();
    ctx().poll();
    EXPECT_FALSE(got);
    sig.emit(type);
    ASSERT_TRUE(run_until([&] { return got.has_value(); }));
    EXPECT_EQ(got->first, asio::error::operation_aborted);
    a.send(static_cast<int>(type));
    EXPECT_EQ(b.receive<int>(), static_cast<int>(type));

    std::optional<error_code> got_bytes, got_fd;
    b.async_receive_bytes(asio::bind_cancellation_slot(
        sig.slot(), [&](error_code ec, std::string) { got_bytes = ec; }));
    sig.emit(type);
    ASSERT_TRUE(run_until([&] { return got_bytes.has_value(); }));
    EXPECT_EQ(*got_bytes, asio::error::operation_aborted);
    b.async_receive_fd(
        asio::bind_cancellation_slot(sig.slot(), [&](error_code ec, unique_fd) { got_fd = ec; }));
    sig.emit(type);
    ASSERT_TRUE(run_until([&] { return got_fd.has_value(); }));
    EXPECT_EQ(*got_fd, asio::error::operation_aborted);
    a.send_bytes("intact");
    EXPECT_EQ(b.receive_bytes(), "intact");
  }
}

TEST_F(pipe_test, receive_cancelled_in_the_middle_of_a_message_loses_nothing) {
  auto [a, b] = make_pipe(ex());
  // A frame that fits the read buffer and one read in place (over 64 KiB).
  for (std::size_t size : {std::size_t{100}, std::size_t{100000}}) {
    SCOPED_TRACE(size);
    const std::string data = pattern(size);
    const std::string frame =
        frame_header(static_cast<std::uint32_t>(size), coproc::detail::bytes_tag) + data;
    const std::size_t first = size == 100 ? 50 : 30000;
    write_raw(a.native_handle(), std::string_view(frame).substr(0, first));
    asio::cancellation_signal sig;
    std::optional<std::pair<error_code, std::string>> got;
    b.async_receive_bytes(asio::bind_cancellation_slot(
        sig.slot(), [&](error_code ec, std::string s) { got.emplace(ec, std::move(s)); }));
    sig.emit(asio::cancellation_type::terminal);
    ASSERT_TRUE(run_until([&] { return got.has_value(); }));
    EXPECT_EQ(got->first, asio::error::operation_aborted);
    // Another type asked for meanwhile: the message is still the bytes one.
    EXPECT_EQ(error_of([&] { b.try_receive<int>(); }), errc::type_mismatch);
    write_raw(a.native_handle(), std::string_view(frame).substr(first));
    const std::string received = size == 100 ? b.receive_bytes() : run(b.async_receive_bytes());
    EXPECT_EQ(received.size(), size);
    EXPECT_EQ(pattern_mismatch(received), std::string::npos);
  }
  a.send(1);
  EXPECT_EQ(b.receive<int>(), 1);
}

TEST_F(pipe_test, awaited_receive_raced_with_a_timer_is_cancelled_cleanly) {
  auto [a, b] = make_pipe(ex());
  auto [first, rec_ec, timer_ec,
        next] = run([&]() -> asio::awaitable<std::tuple<std::size_t, error_code, error_code, int>> {
    asio::steady_timer t(co_await asio::this_coro::executor, 10ms);
    auto results = co_await asio::experimental::make_parallel_group(
                       b.async_receive<int>(asio::deferred), t.async_wait(asio::deferred))
                       .async_wait(asio::experimental::wait_for_one(), asio::use_awaitable);
    co_await a.async_send(11);
    int next = co_await b.async_receive<int>();
    co_return std::tuple{std::get<0>(results)[0], std::get<1>(results), std::get<3>(results), next};
  }());
  EXPECT_EQ(first, 1u) << "the timer completes first: nothing was sent";
  EXPECT_EQ(rec_ec, asio::error::operation_aborted);
  EXPECT_FALSE(timer_ec);
  EXPECT_EQ(next, 11);

  // The awaitable form (default token) with the awaitable operators.
  const point p{1, 2, "after", {3}};
  auto [winner, after] = run([&]() -> asio::awaitable<std::pair<std::size_t, point>> {
    asio::steady_timer t(co_await asio::this_coro::executor, 10ms);
    auto r = co_await (b.async_receive<point>() || t.async_wait(asio::use_awaitable));
    co_await a.async_send(p);
    co_return std::pair{r.index(), co_await b.async_receive<point>()};
  }());
  EXPECT_EQ(winner, 1u);
  EXPECT_EQ(after, p);
}

TEST_F(pipe_test, close_while_a_receive_waits_completes_it_with_operation_aborted) {
  auto [a, b] = make_pipe(ex());
  std::optional<error_code> got, got_bytes;
  b.async_receive<int>([&](error_code ec, int) { got = ec; });
  b.close();
  EXPECT_FALSE(b.is_open());
  EXPECT_FALSE(b.can_send());
  EXPECT_FALSE(b.can_receive());
  ASSERT_TRUE(run_until([&] { return got.has_value(); }));
  EXPECT_EQ(*got, asio::error::operation_aborted);
  EXPECT_EQ(error_of([&] { a.receive<int>(); }), asio::error::eof) << "the peer sees the close";

  auto [c, d] = make_pipe(ex());
  auto waiting = [&]() -> asio::awaitable<void> {
    auto [ec, s] = co_await d.async_receive_bytes(tuple_awaitable);
    got_bytes = ec;
  };
  asio::co_spawn(ctx(), waiting(), asio::detached);
  ctx().restart();
  ctx().poll();
  EXPECT_FALSE(got_bytes);
  d.close();
  ASSERT_TRUE(run_until([&] { return got_bytes.has_value(); }));
  EXPECT_EQ(*got_bytes, asio::error::operation_aborted);
  // Operations on a closed connection fail at once.
  EXPECT_EQ(error_of([&] { d.receive<int>(); }), asio::error::bad_descriptor);
  error_code ec;
  d.send(1, ec);
  EXPECT_EQ(ec, asio::error::bad_descriptor);
}

TEST_F(pipe_test, destroying_a_connection_with_a_pending_receive_closes_it) {
  auto [a, b] = make_pipe(ex());
  std::optional<error_code> got;
  {
    connection doomed = std::move(b);
    doomed.async_receive<int>([&](error_code ec, int) { got = ec; });
  }
  // Awaited, so that a descriptor left open fails the test rather than hangs it.
  auto [ec, v] = run(a.async_receive<int>(tuple_awaitable), 10s);
  EXPECT_EQ(ec, asio::error::eof) << "the peer sees end-of-stream once the connection is gone";
  ASSERT_TRUE(run_until([&] { return got.has_value(); }));
  EXPECT_EQ(*got, asio::error::operation_aborted);

  // Assigning over a connection closes it the same way.
  auto [c, d] = make_pipe(ex());
  auto [e, f] = make_pipe(ex());
  std::optional<error_code> got_d;
  d.async_receive_bytes([&](error_code ec, std::string) { got_d = ec; });
  d = std::move(f);
  std::tie(ec, v) = run(c.async_receive<int>(tuple_awaitable), 10s);
  EXPECT_EQ(ec, asio::error::eof);
  ASSERT_TRUE(run_until([&] { return got_d.has_value(); }));
  EXPECT_EQ(*got_d, asio::error::operation_aborted);
  e.send(4);
  EXPECT_EQ(d.receive<int>(), 4);
}

TEST_F(pipe_test, cancelled_send_with_part_of_its_frame_out_ends_the_stream_for_the_peer) {
  auto [a, b] = make_pipe(ex());
  asio::cancellation_signal sig;
  std::optional<error_code> got;
  // Far more than the socket holds: part goes out at once, the rest waits.
  a.async_send_bytes(std::string(8u << 20, 's'),
                     asio::bind_cancellation_slot(sig.slot(), [&](error_code ec) { got = ec; }));
  ctx().restart();
  ctx().poll();
  EXPECT_FALSE(got);
  sig.emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(run_until([&] { return got.has_value(); }));
  EXPECT_EQ(*got, asio::error::operation_aborted);
  EXPECT_FALSE(a.can_send());
  EXPECT_TRUE(a.can_receive());
  EXPECT_EQ(error_of([&] { b.receive_bytes(); }), asio::error::eof)
      << "the peer sees end-of-stream, not half a message";
  // The other direction still works.
  b.send(3);
  EXPECT_EQ(a.receive<int>(), 3);

  // The same for an awaited typed send (written in part before it first suspends).
  auto [c, d] = make_pipe(ex());
  const std::string big(8u << 20, 't');
  auto winner = run([&]() -> asio::awaitable<std::size_t> {
    asio::steady_timer t(co_await asio::this_coro::executor, 10ms);
    auto r = co_await (c.async_send(big) || t.async_wait(asio::use_awaitable));
    co_return r.index();
  }());
  EXPECT_EQ(winner, 1u) << "the send cannot finish: nobody reads";
  EXPECT_FALSE(c.can_send());
  EXPECT_EQ(error_of([&] { d.receive<std::string>(); }), asio::error::eof);
}

// --- adopting descriptors --------------------------------------------------------------------

TEST_F(pipe_test, adopts_an_end_of_a_socketpair) {
  int sv[2];
  // Inheritable, and one end non-blocking: adoption makes both close-on-exec and blocking.
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  connection a(ex(), sv[0]);
  connection b(ex(), sv[1], coproc::connection_options{.max_message_size = 1000});
  EXPECT_EQ(a.native_handle(), sv[0]);
  EXPECT_TRUE(close_on_exec(sv[0]));
  EXPECT_FALSE(::fcntl(sv[1], F_GETFL) & O_NONBLOCK);
  EXPECT_EQ(b.max_message_size(), 1000u);
  a.send(point{1, 2, "adopted", {}});
  EXPECT_EQ(b.receive<point>(), (point{1, 2, "adopted", {}}));
  b.send_bytes("back");
  EXPECT_EQ(run(a.async_receive_bytes()), "back");

  // release() hands the descriptor back; adopting it again works.
  const int fd = a.release();
  EXPECT_EQ(fd, sv[0]);
  EXPECT_FALSE(a.is_open());
  connection again(ex(), fd);
  again.send(5);
  EXPECT_EQ(b.receive<int>(), 5);
}

TEST_F(pipe_test, adopting_a_descriptor_that_is_not_a_unix_stream_socket_throws) {
  raw_pipe p;
  try {
    connection c(ex(), p.read_end());
    ADD_FAILURE() << "a pipe was adopted";
  } catch (const boost::system::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("descriptor " + std::to_string(p.read_end())),
              std::string::npos)
        << e.what();
  }
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
  try {
    connection c(ex(), sv[0]);
    ADD_FAILURE() << "a datagram socket was adopted";
  } catch (const boost::system::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("descriptor " + std::to_string(sv[0])), std::string::npos)
        << e.what();
  }
  // A refused descriptor stays the caller's.
  EXPECT_EQ(::fcntl(p.read_end(), F_GETFD) >= 0, true);
  EXPECT_EQ(::close(sv[0]), 0);
  EXPECT_EQ(::close(sv[1]), 0);
}

TEST_F(pipe_test, a_closed_connection_refuses_everything) {
  connection c;
  EXPECT_FALSE(c.is_open());
  EXPECT_FALSE(c.can_send());
  EXPECT_FALSE(c.can_receive());
  EXPECT_EQ(c.native_handle(), -1);
  EXPECT_EQ(c.release(), -1);
  c.close();
  error_code ec;
  c.send(1, ec);
  EXPECT_EQ(ec, asio::error::bad_descriptor);
  c.send_bytes("x", ec);
  EXPECT_EQ(ec, asio::error::bad_descriptor);
  EXPECT_EQ(error_of([&] { c.receive<int>(); }), asio::error::bad_descriptor);
  auto [e1, v] = run(c.async_receive<int>(tuple_awaitable));
  EXPECT_EQ(e1, asio::error::bad_descriptor);

  // A moved-from connection is closed; the moved-to one works.
  auto [a, b] = make_pipe(ex());
  connection moved = std::move(a);
  EXPECT_FALSE(a.is_open());
  moved.send(8);
  EXPECT_EQ(b.receive<int>(), 8);
}

// --- an end in a spawned program -------------------------------------------------------------

TEST_F(pipe_test, an_end_passed_to_a_spawned_program_carries_frames_both_ways) {
  auto [mine, theirs] = make_pipe(ex());
  auto c = coproc::spawn(ex(), helper("echo-frames", "3").pass_fd(3, theirs.native_handle()));
  theirs.close();
  auto bad = run([&]() -> asio::awaitable<int> {
    int bad = 0;
    for (int i = 0; i < 50; ++i) {
      const point p{i, i / 2.0, "echo " + std::to_string(i), std::vector<int>(i, i)};
      co_await mine.async_send(p);
      if (co_await mine.async_receive<point>() != p) ++bad;
    }
    // A burst, its echoes read meanwhile (the program echoes each frame at once, so it
    // stops reading while its echoes are not read); and a message larger than the socket
    // holds.
    co_await ([&]() -> asio::awaitable<void> {
      for (int i = 0; i < 1000; ++i) co_await mine.async_send(i);
    }() && [&]() -> asio::awaitable<void> {
      for (int i = 0; i < 1000; ++i)
        if (co_await mine.async_receive<int>() != i) ++bad;
    }());
    const std::string big = pattern(3u << 20);
    co_await (mine.async_send_bytes(big) && [&]() -> asio::awaitable<void> {
      if (co_await mine.async_receive_bytes() != big) ++bad;
    }());
    co_return bad;
  }());
  EXPECT_EQ(bad, 0);
  mine.close();  // the program sees end-of-file and exits
  auto status = run(c.async_wait());
  EXPECT_TRUE(status.success()) << status.to_string();
}

}  // namespace
