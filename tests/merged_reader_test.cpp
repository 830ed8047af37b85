#include <coproc/merged_reader.hpp>

#include <coproc/child.hpp>
#include <coproc/error.hpp>

#include "fixture.hpp"

#include <boost/asio/as_tuple.hpp>

#include <functional>
#include <string>
#include <vector>

#include <poll.h>

namespace coproc {
inline void PrintTo(const tagged_line& l, std::ostream* os) {
  *os << (l.from == source::out ? "out: " : "err: ") << '"' << l.text << '"';
}
}  // namespace coproc

namespace {

using namespace coproc_test;
using coproc::child;
using coproc::merged_reader;
using coproc::source;
using coproc::stdio;
using coproc::tagged_line;

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

class merged_reader_test : public io_test {
 protected:
  child spawn_piped(coproc::command c) {
    return coproc::spawn(
        ex(), std::move(c).std_in(stdio::pipe()).std_out(stdio::pipe()).std_err(stdio::pipe()));
  }
  /// Writes `line` and a newline to the child's stdin.
  static asio::awaitable<void> say(child& c, std::string line) {
    line += '\n';
    co_await c.std_in().async_write(asio::buffer(line));
  }
};

asio::awaitable<std::vector<tagged_line>> read_all_lines(merged_reader& m) {
  std::vector<tagged_line> lines;
  while (auto l = co_await m.async_read_line()) lines.push_back(std::move(*l));
  co_return lines;
}

TEST_F(merged_reader_test, lines_come_in_the_order_they_were_written_lockstep) {
  child c = spawn_piped(helper("interleave"));
  merged_reader m(c.std_out(), c.std_err());
  const std::vector<tagged_line> script = {
      {source::out, "A"}, {source::err, "B"}, {source::err, "C"},     {source::out, "D"},
      {source::err, "E"}, {source::out, "F"}, {source::out, "G G G"}, {source::err, ""}};
  auto got = run([&]() -> asio::awaitable<std::vector<tagged_line>> {
    std::vector<tagged_line> got;
    for (const auto& step : script) {
      // One line at a time: the next is written only after the previous one was read.
      co_await say(c, (step.from == source::out ? "o " : "e ") + step.text);
      auto line = co_await m.async_read_line();
      got.push_back(line.value_or(tagged_line{source::out, "<end>"}));
    }
    c.std_in().close();
    auto end = co_await m.async_read_line();
    EXPECT_FALSE(end.has_value());
    auto again = co_await m.async_read_line();
    EXPECT_FALSE(again.has_value()) << "end stays end";
    co_return got;
  }());
  EXPECT_EQ(got, script);
  EXPECT_TRUE(run(c.async_wait()).success());
}

TEST_F(merged_reader_test, every_line_of_both_streams_arrives_once_in_stream_order) {
  constexpr std::size_t n = 200000;  // per stream: 3278 full pattern lines and a partial one
  child c = coproc::spawn(
      ex(), helper("out-err", std::to_string(n)).std_out(stdio::pipe()).std_err(stdio::pipe()));
  merged_reader m(c.std_out(), c.std_err());
  auto lines = run(read_all_lines(m));
  std::string out, err;
  for (const auto& l : lines) (l.from == source::out ? out : err) += l.text + "\n";
  // Re-joined per stream, the lines are the pattern (the last one had no newline).
  const std::string expected = pattern(n) + "\n";
  EXPECT_EQ(out.size(), expected.size());
  EXPECT_TRUE(out == expected);
  EXPECT_EQ(err.size(), expected.size());
  EXPECT_TRUE(err == expected);
  run(c.async_wait());
}

TEST_F(merged_reader_test, partial_last_lines_and_one_stream_ending_first) {
  child c = spawn_piped(helper("errline", "e1", "close", "2", "readline", "partial", "o-tail"));
  merged_reader m(c.std_out(), c.std_err());
  auto lines = run([&]() -> asio::awaitable<std::vector<tagged_line>> {
    std::vector<tagged_line> lines;
    // stderr ends first; stdout still works after it.
    auto first = co_await m.async_read_line();
    if (first) lines.push_back(*first);
    co_await say(c, "go");
    c.std_in().close();
    auto rest = co_await read_all_lines(m);
    lines.insert(lines.end(), rest.begin(), rest.end());
    co_return lines;
  }());
  EXPECT_EQ(lines, (std::vector<tagged_line>{{source::err, "e1"}, {source::out, "o-tail"}}));
  run(c.async_wait());
}

TEST_F(merged_reader_test, a_too_long_line_is_an_error_and_its_bytes_stay_readable) {
  child c = spawn_piped(helper("errline", "far too long for the bound"));
  c.std_in().close();
  c.std_err().set_max_line(8);
  merged_reader m(c.std_out(), c.std_err());
  auto [ec, line] = run(m.async_read_line(tuple_awaitable));
  EXPECT_EQ(ec, coproc::errc::line_too_long);
  EXPECT_FALSE(line.has_value());
  EXPECT_EQ(run(c.std_err().async_read_all()), "far too long for the bound\n");
  EXPECT_EQ(run(c.std_out().async_read_all()), "");
  run(c.async_wait());
}

TEST_F(merged_reader_test, cancelling_before_any_data_loses_nothing) {
  child c = spawn_piped(helper("interleave"));
  merged_reader m(c.std_out(), c.std_err());
  asio::cancellation_signal sig;
  std::optional<error_code> result;
  m.async_read_line(asio::bind_cancellation_slot(
      sig.slot(), [&](error_code ec, std::optional<tagged_line>) { result = ec; }));
  ctx().poll();
  sig.emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(run_until([&] { return result.has_value(); }));
  EXPECT_EQ(*result, asio::error::operation_aborted);

  auto got = run([&]() -> asio::awaitable<std::vector<tagged_line>> {
    co_await say(c, "e after cancel");
    co_await say(c, "o and more");
    c.std_in().close();
    co_return co_await read_all_lines(m);
  }());
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0] == tagged_line(source::err, "after cancel") ||
                got[1] == tagged_line(source::err, "after cancel"),
            true);
  EXPECT_EQ(got[0] == tagged_line(source::out, "and more") ||
                got[1] == tagged_line(source::out, "and more"),
            true);
  run(c.async_wait());
}

TEST_F(merged_reader_test, a_line_that_arrives_while_cancelling_is_returned_next) {
  child c = spawn_piped(helper("interleave"));
  merged_reader m(c.std_out(), c.std_err());
  for (int round = 0; round < 20; ++round) {
    const std::string text = "round " + std::to_string(round);
    const bool to_err = round % 2 == 1;
    run(say(c, (to_err ? "e " : "o ") + text));
    // Wait (an event, not a sleep) until the line is readable, then start a read and
    // cancel it at once: it may complete with the line or be aborted, never lose it.
    pollfd pfd{(to_err ? c.std_err() : c.std_out()).native_handle(), POLLIN, 0};
    ASSERT_EQ(::poll(&pfd, 1, 30000), 1);
    asio::cancellation_signal sig;
    std::optional<std::pair<error_code, std::optional<tagged_line>>> result;
    m.async_read_line(asio::bind_cancellation_slot(
        sig.slot(), [&](error_code ec, std::optional<tagged_line> l) { result.emplace(ec, l); }));
    sig.emit(asio::cancellation_type::terminal);
    ASSERT_TRUE(run_until([&] { return result.has_value(); }));
    std::optional<tagged_line> line = result->second;
    if (result->first == asio::error::operation_aborted) {
      EXPECT_FALSE(line.has_value());
      line = run(m.async_read_line());
    } else {
      EXPECT_FALSE(result->first) << result->first.message();
    }
    EXPECT_EQ(line, (tagged_line{to_err ? source::err : source::out, text}));
  }
  c.std_in().close();
  EXPECT_FALSE(run(m.async_read_line()).has_value()) << "no line was duplicated";
  run(c.async_wait());
}

TEST_F(merged_reader_test, callback_form) {
  child c = spawn_piped(helper("outline", "o", "errline", "e"));
  c.std_in().close();
  merged_reader m(c.std_out(), c.std_err());
  std::vector<tagged_line> got;
  bool done = false;
  std::function<void()> next = [&] {
    m.async_read_line([&](error_code ec, std::optional<tagged_line> l) {
      EXPECT_FALSE(ec);
      if (!l || ec) {
        done = true;
        return;
      }
      got.push_back(*l);
      next();
    });
  };
  next();
  ASSERT_TRUE(run_until([&] { return done; }));
  ASSERT_EQ(got.size(), 2u);
  run(c.async_wait());
}

}  // namespace
