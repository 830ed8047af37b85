#include <coproc/stream.hpp>

#include <coproc/child.hpp>
#include <coproc/error.hpp>

#include "fixture.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_future.hpp>

#include <cerrno>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace {

using namespace coproc_test;
using namespace boost::asio::experimental::awaitable_operators;
using coproc::pipe_reader;
using coproc::pipe_writer;
using coproc::stdio;

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

class stream_test : public io_test {
 protected:
  /// A pipe whose read end is a pipe_reader; the test writes the other end directly.
  struct raw_source {
    raw_pipe p;
    pipe_reader reader;
    explicit raw_source(const coproc::executor_type& ex, std::size_t max_line = 1 << 20)
        : reader(ex, dup_cloexec(p.read_end()), max_line) {
      p.close_read();
    }
    void write(std::string_view s) {
      while (!s.empty()) {
        ssize_t n = ::write(p.write_end(), s.data(), s.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw std::runtime_error("write failed");
        s.remove_prefix(static_cast<std::size_t>(n));
      }
    }
    void close() { p.close_write(); }
    static int dup_cloexec(int fd) { return ::fcntl(fd, F_DUPFD_CLOEXEC, 0); }
  };

  coproc::child spawn_out(coproc::command c) {
    return coproc::spawn(ex(), std::move(c).std_out(stdio::pipe()));
  }
};

asio::awaitable<std::vector<std::string>> read_lines(pipe_reader& r) {
  std::vector<std::string> lines;
  while (auto line = co_await r.async_read_line()) lines.push_back(std::move(*line));
  co_return lines;
}

/// Everything left, through async_read_some.
asio::awaitable<std::string> read_some_all(pipe_reader& r) {
  std::string all;
  char buf[4096];
  for (;;) {
    auto [ec, n] = co_await r.async_read_some(asio::buffer(buf), tuple_awaitable);
    all.append(buf, n);
    if (ec == asio::error::eof) break;
    if (ec) throw boost::system::system_error(ec);
  }
  co_return all;
}

// --- lines ---------------------------------------------------------------------------------

TEST_F(stream_test, reads_lines_then_a_final_partial_line_then_end) {
  raw_source src(ex());
  src.write("a\nbb\n\nlast");
  src.close();
  auto lines = run(read_lines(src.reader));
  EXPECT_EQ(lines, (std::vector<std::string>{"a", "bb", "", "last"}));
  EXPECT_TRUE(src.reader.eof());
  // End-of-file stays end-of-file.
  auto again = run(src.reader.async_read_line());
  EXPECT_FALSE(again.has_value());
}

TEST_F(stream_test, partial_last_line_from_a_child) {
  auto c = spawn_out(helper("outline", "first", "partial", "no newline"));
  auto lines = run(read_lines(c.std_out()));
  EXPECT_EQ(lines, (std::vector<std::string>{"first", "no newline"}));
  EXPECT_TRUE(run(c.async_wait()).success());
}

TEST_F(stream_test, crlf_is_stripped_only_before_the_newline) {
  auto c = spawn_out(helper("crlf"));
  auto lines = run(read_lines(c.std_out()));
  EXPECT_EQ(lines, (std::vector<std::string>{"alpha", "beta", "", "gam\rma", "last"}));
  run(c.async_wait());
}

TEST_F(stream_test, binary_data_with_nul_bytes_is_kept) {
  auto c = spawn_out(helper("nul"));
  auto all = run(c.std_out().async_read_all());
  EXPECT_EQ(all, nul_payload());
  run(c.async_wait());

  auto d = spawn_out(helper("nul"));
  auto lines = run(read_lines(d.std_out()));
  EXPECT_EQ(lines, split_lines(nul_payload()));
  run(d.async_wait());
}

TEST_F(stream_test, many_lines_arrive_in_order) {
  auto c = spawn_out(helper("lines", "20000", "30"));
  auto lines = run(read_lines(c.std_out()));
  ASSERT_EQ(lines.size(), 20000u);
  for (std::size_t i = 0; i < lines.size(); ++i)
    ASSERT_EQ(lines[i], numbered_line(i, 30)) << "line " << i;
  run(c.async_wait());
}

TEST_F(stream_test, lines_that_arrive_slowly_in_separate_writes) {
  auto c = spawn_out(helper("delay-lines", "5", "5"));
  auto lines = run(read_lines(c.std_out()));
  EXPECT_EQ(lines, (std::vector<std::string>{"line 0", "line 1", "line 2", "line 3", "line 4"}));
  run(c.async_wait());
}

TEST_F(stream_test, very_long_line_is_an_error_and_no_byte_is_dropped) {
  constexpr std::size_t len = 3u << 20;  // over the default 1 MiB bound
  auto c =
      spawn_out(helper("outline", "short", "longline", std::to_string(len), "outline", "after"));
  EXPECT_EQ(c.std_out().max_line(), std::size_t{1} << 20);
  auto [first, ec, rest] =
      run([&]() -> asio::awaitable<std::tuple<std::string, error_code, std::string>> {
        auto first = co_await c.std_out().async_read_line();
        auto [ec, line] = co_await c.std_out().async_read_line(tuple_awaitable);
        EXPECT_FALSE(line.has_value());
        auto rest = co_await read_some_all(c.std_out());
        co_return std::tuple{first.value_or("<none>"), ec, rest};
      }());
  EXPECT_EQ(first, "short");
  EXPECT_EQ(ec, coproc::errc::line_too_long);
  ASSERT_EQ(rest.size(), len + std::string_view("\nafter\n").size());
  for (std::size_t i = 0; i < len; ++i) ASSERT_EQ(rest[i], long_line_byte(i)) << "byte " << i;
  EXPECT_EQ(rest.substr(len), "\nafter\n");
  EXPECT_TRUE(run(c.async_wait()).success());
}

TEST_F(stream_test, custom_max_line_from_the_command) {
  auto c = spawn_out(
      helper("outline", std::string(16, 'a'), "outline", std::string(17, 'b')).max_line(16));
  EXPECT_EQ(c.std_out().max_line(), 16u);
  auto [first, ec, rest] =
      run([&]() -> asio::awaitable<std::tuple<std::string, error_code, std::string>> {
        auto first = co_await c.std_out().async_read_line();
        auto [ec, line] = co_await c.std_out().async_read_line(tuple_awaitable);
        co_return std::tuple{first.value_or("<none>"), ec, co_await read_some_all(c.std_out())};
      }());
  EXPECT_EQ(first, std::string(16, 'a')) << "a line of exactly max_line is accepted";
  EXPECT_EQ(ec, coproc::errc::line_too_long);
  EXPECT_EQ(rest, std::string(17, 'b') + "\n");
  run(c.async_wait());
}

TEST_F(stream_test, set_max_line_applies_to_later_reads) {
  raw_source src(ex());
  src.write("0123456789\n0123456789\n");
  src.close();
  src.reader.set_max_line(4);
  EXPECT_EQ(src.reader.max_line(), 4u);
  auto [ec, line] = run(src.reader.async_read_line(tuple_awaitable));
  EXPECT_EQ(ec, coproc::errc::line_too_long);
  src.reader.set_max_line(100);
  EXPECT_EQ(run(src.reader.async_read_line()), "0123456789");
  EXPECT_EQ(run(src.reader.async_read_line()), "0123456789");
}

TEST_F(stream_test, read_line_then_read_some_gets_the_buffered_rest) {
  raw_source src(ex());
  src.write("first\nrest of data");
  src.close();
  auto [line, rest] = run([&]() -> asio::awaitable<std::pair<std::string, std::string>> {
    auto line = co_await src.reader.async_read_line();
    co_return std::pair{line.value_or("<none>"), co_await read_some_all(src.reader)};
  }());
  EXPECT_EQ(line, "first");
  EXPECT_EQ(rest, "rest of data");
}

TEST_F(stream_test, read_some_reports_eof) {
  raw_source src(ex());
  src.write("xy");
  src.close();
  char buf[16];
  auto [ec1, n1] = run(src.reader.async_read_some(asio::buffer(buf), tuple_awaitable));
  EXPECT_FALSE(ec1);
  EXPECT_EQ(std::string(buf, n1), "xy");
  auto [ec2, n2] = run(src.reader.async_read_some(asio::buffer(buf), tuple_awaitable));
  EXPECT_EQ(ec2, asio::error::eof);
  EXPECT_EQ(n2, 0u);
}

// --- read_all ------------------------------------------------------------------------------

TEST_F(stream_test, read_all_returns_everything) {
  constexpr std::size_t n = 20u << 20;
  auto c = spawn_out(helper("out", std::to_string(n)));
  auto all = run(c.std_out().async_read_all());
  EXPECT_EQ(all.size(), n);
  EXPECT_EQ(pattern_mismatch(all), std::string::npos);
  run(c.async_wait());
}

TEST_F(stream_test, read_all_with_limit_returns_the_first_bytes_and_keeps_the_rest) {
  raw_source src(ex());
  std::string data = pattern(1000);
  src.write(data);
  src.close();
  auto [ec, first] = run(src.reader.async_read_all(100, tuple_awaitable));
  EXPECT_EQ(ec, coproc::errc::output_limit_exceeded);
  EXPECT_EQ(first, data.substr(0, 100));
  auto rest = run(src.reader.async_read_all());
  EXPECT_EQ(rest, data.substr(100));
}

TEST_F(stream_test, read_all_with_limit_equal_to_the_size_succeeds) {
  raw_source src(ex());
  src.write("exactly10!");
  src.close();
  auto [ec, all] = run(src.reader.async_read_all(10, tuple_awaitable));
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(all, "exactly10!");
}

TEST_F(stream_test, read_all_with_limit_on_a_child_that_writes_a_lot) {
  auto c = spawn_out(helper("out", std::to_string(10u << 20)));
  auto [ec, first] = run(c.std_out().async_read_all(4096, tuple_awaitable));
  EXPECT_EQ(ec, coproc::errc::output_limit_exceeded);
  EXPECT_EQ(first, pattern(4096));
  auto rest = run(c.std_out().async_read_all());
  EXPECT_EQ(rest.size(), (10u << 20) - 4096);
  EXPECT_EQ(pattern_mismatch(rest, 4096), std::string::npos);
  run(c.async_wait());
}

// --- for_each_line -------------------------------------------------------------------------

TEST_F(stream_test, for_each_line_visits_every_line) {
  auto c = spawn_out(helper("lines", "50000", "12", "partial", "tail"));
  std::vector<std::string> seen;
  auto count =
      run(c.std_out().async_for_each_line([&](std::string_view line) { seen.emplace_back(line); }));
  EXPECT_EQ(count, 50001u);
  ASSERT_EQ(seen.size(), 50001u);
  for (std::size_t i = 0; i < 50000; ++i) ASSERT_EQ(seen[i], numbered_line(i, 12));
  EXPECT_EQ(seen.back(), "tail");
  run(c.async_wait());
}

TEST_F(stream_test, for_each_line_reports_a_too_long_line) {
  raw_source src(ex(), 8);
  src.write("short\nmuch too long for eight\nnext\n");
  src.close();
  std::vector<std::string> seen;
  auto [ec, n] = run(src.reader.async_for_each_line(
      [&](std::string_view line) { seen.emplace_back(line); }, tuple_awaitable));
  EXPECT_EQ(ec, coproc::errc::line_too_long);
  EXPECT_EQ(n, 1u);
  EXPECT_EQ(seen, (std::vector<std::string>{"short"}));
  EXPECT_EQ(run(read_some_all(src.reader)), "much too long for eight\nnext\n");
}

TEST_F(stream_test, for_each_line_strips_crlf) {
  auto c = spawn_out(helper("crlf"));
  std::vector<std::string> seen;
  run(c.std_out().async_for_each_line([&](std::string_view l) { seen.emplace_back(l); }));
  EXPECT_EQ(seen, (std::vector<std::string>{"alpha", "beta", "", "gam\rma", "last"}));
  run(c.async_wait());
}

// --- cancellation and timeouts ---------------------------------------------------------------

TEST_F(stream_test, cancelled_read_line_consumes_nothing) {
  raw_source src(ex());
  src.write("ab");  // a line's beginning, no newline yet
  asio::cancellation_signal sig;
  std::optional<error_code> result;
  src.reader.async_read_line(asio::bind_cancellation_slot(
      sig.slot(), [&](error_code ec, std::optional<std::string>) { result = ec; }));
  ctx().poll();  // let it read what is there
  sig.emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(run_until([&] { return result.has_value(); }));
  EXPECT_EQ(*result, asio::error::operation_aborted);

  src.write("cd\n");
  EXPECT_EQ(run(src.reader.async_read_line()), "abcd");
}

TEST_F(stream_test, cancelled_read_some_consumes_nothing) {
  raw_source src(ex());
  asio::cancellation_signal sig;
  std::optional<error_code> result;
  char buf[8];
  src.reader.async_read_some(
      asio::buffer(buf),
      asio::bind_cancellation_slot(sig.slot(), [&](error_code ec, std::size_t) { result = ec; }));
  ctx().poll();
  sig.emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(run_until([&] { return result.has_value(); }));
  EXPECT_EQ(*result, asio::error::operation_aborted);
  src.write("xyz");
  src.close();
  EXPECT_EQ(run(read_some_all(src.reader)), "xyz");
}

TEST_F(stream_test, a_timer_raced_against_read_line_cancels_it) {
  raw_source src(ex());
  auto [which, line] = run([&]() -> asio::awaitable<std::pair<std::size_t, std::string>> {
    asio::steady_timer t(co_await asio::this_coro::executor, 20ms);
    auto v = co_await (src.reader.async_read_line() || t.async_wait(asio::use_awaitable));
    // The reader is usable after the cancelled read.
    src.write("late\n");
    auto next = co_await src.reader.async_read_line();
    co_return std::pair{v.index(), next.value_or("<none>")};
  }());
  EXPECT_EQ(which, 1u) << "the timer must win: nothing was written";
  EXPECT_EQ(line, "late");
}

TEST_F(stream_test, destroying_a_reader_aborts_its_operation) {
  raw_source src(ex());
  auto reader = std::make_unique<pipe_reader>(std::move(src.reader));
  std::optional<error_code> result;
  reader->async_read_line([&](error_code ec, std::optional<std::string>) { result = ec; });
  ctx().poll();
  reader.reset();
  ASSERT_TRUE(run_until([&] { return result.has_value(); }));
  EXPECT_EQ(*result, asio::error::operation_aborted);
}

// --- ownership -----------------------------------------------------------------------------

TEST_F(stream_test, a_moved_reader_keeps_its_buffered_bytes) {
  raw_source src(ex());
  src.write("l1\nl2\nl3");
  src.close();
  EXPECT_EQ(run(src.reader.async_read_line()), "l1");
  pipe_reader moved(std::move(src.reader));
  EXPECT_TRUE(moved.is_open());
  EXPECT_EQ(run(read_lines(moved)), (std::vector<std::string>{"l2", "l3"}));
  pipe_reader assigned(ex());
  EXPECT_FALSE(assigned.is_open());
  assigned = std::move(moved);
  EXPECT_TRUE(assigned.is_open());
  EXPECT_TRUE(assigned.eof());
}

TEST_F(stream_test, reading_a_stream_that_is_not_a_pipe_is_no_pipe) {
  auto [rec, line] =
      run([&]() -> asio::awaitable<std::tuple<error_code, std::optional<std::string>>> {
        pipe_reader r(ex());
        co_return co_await r.async_read_line(tuple_awaitable);
      }());
  EXPECT_EQ(rec, coproc::errc::no_pipe);
  EXPECT_FALSE(line);
  auto [wec, n] = run([&]() -> asio::awaitable<std::tuple<error_code, std::size_t>> {
    pipe_writer w(ex());
    co_return co_await w.async_write(asio::buffer("x", 1), tuple_awaitable);
  }());
  EXPECT_EQ(wec, coproc::errc::no_pipe);
  EXPECT_EQ(n, 0u);
}

TEST_F(stream_test, closed_reader_and_writer) {
  pipe_reader r(ex());
  pipe_writer w(ex());
  EXPECT_FALSE(r.is_open());
  EXPECT_FALSE(w.is_open());
  EXPECT_EQ(r.buffered(), 0u);
  EXPECT_FALSE(r.eof());
}

TEST_F(stream_test, reader_close_is_seen_by_the_writer_as_broken_pipe) {
  raw_pipe p;
  pipe_writer w(ex(), ::fcntl(p.write_end(), F_DUPFD_CLOEXEC, 0));
  p.close_write();
  {
    pipe_reader r = p.reader(ex());
    r.close();
    EXPECT_FALSE(r.is_open());
  }
  std::string data = "no one reads this";
  auto [ec, n] = run(w.async_write(asio::buffer(data), tuple_awaitable));
  EXPECT_EQ(ec, asio::error::broken_pipe);
  // Reaching this line means the process did not die of SIGPIPE.
}

TEST_F(stream_test, writer_and_reader_move_a_lot_of_data_concurrently) {
  raw_pipe p;
  pipe_writer w(ex(), ::fcntl(p.write_end(), F_DUPFD_CLOEXEC, 0));
  p.close_write();
  pipe_reader r = p.reader(ex());
  const std::string data = pattern(16u << 20);
  auto [written, got] = run([&]() -> asio::awaitable<std::pair<std::size_t, std::string>> {
    auto writer = [&]() -> asio::awaitable<std::size_t> {
      auto n = co_await w.async_write(asio::buffer(data));
      w.close();
      co_return n;
    };
    auto [n, all] = co_await (writer() && r.async_read_all());
    co_return std::pair{n, std::move(all)};
  }());
  EXPECT_EQ(written, data.size());
  EXPECT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
}

TEST_F(stream_test, writer_close_gives_the_child_end_of_file) {
  auto c = coproc::spawn(ex(), helper("cat-count").std_in(stdio::pipe()).std_out(stdio::pipe()));
  ASSERT_TRUE(c.std_in().is_open());
  std::string data(12345, 'z');
  auto out = run([&]() -> asio::awaitable<std::string> {
    co_await c.std_in().async_write(asio::buffer(data));
    c.std_in().close();
    co_return co_await c.std_out().async_read_all();
  }());
  EXPECT_EQ(out, "12345\n");
  EXPECT_FALSE(c.std_in().is_open());
  run(c.async_wait());
}

// --- other completion tokens -----------------------------------------------------------------

TEST_F(stream_test, operations_take_plain_callbacks) {
  raw_source src(ex());
  src.write("cb line\nrest");
  src.close();
  std::vector<std::string> got;
  std::function<void()> next = [&] {
    src.reader.async_read_line([&](error_code ec, std::optional<std::string> line) {
      EXPECT_FALSE(ec);
      if (!line) {
        got.push_back("<eof>");
        return;
      }
      got.push_back(*line);
      next();
    });
  };
  next();
  EXPECT_TRUE(run_until([&] { return !got.empty() && got.back() == "<eof>"; }));
  EXPECT_EQ(got, (std::vector<std::string>{"cb line", "rest", "<eof>"}));
}

TEST_F(stream_test, operations_take_use_future) {
  raw_source src(ex());
  src.write("future line\n");
  src.close();
  auto guard = asio::make_work_guard(ctx());
  std::thread runner([&] { ctx().run(); });
  std::future<std::optional<std::string>> line = src.reader.async_read_line(asio::use_future);
  const bool ready = line.wait_for(30s) == std::future_status::ready;
  guard.reset();
  ctx().stop();
  runner.join();
  ASSERT_TRUE(ready) << "use_future did not complete";
  EXPECT_EQ(line.get(), std::optional<std::string>("future line"));
}

}  // namespace
