// merged_output: a child that writes to both stdout and stderr, read two ways.
//
//   1. merged_reader: two pipes, every line tagged with the stream it came from, in the
//      order the lines arrived.
//   2. merge_stderr(): one pipe, stderr joins stdout inside the child (Python's
//      stderr=STDOUT), so the order is exactly the order of the writes, but untagged.
#include <coproc/coproc.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <exception>
#include <iostream>

namespace asio = boost::asio;
namespace cp = coproc;

// The pauses matter for the first reading only: two lines written microseconds apart to two
// different pipes are both ready when the parent looks, and then either may come first.
// Through one pipe (the second reading) the order is the write order, pauses or not.
const char* const script = R"(
  echo "out: starting"
  sleep 0.05; echo "err: a warning" >&2
  sleep 0.05; echo "out: working"
  sleep 0.05; echo "err: an error" >&2
  sleep 0.05; printf "out: done, no newline at the end"
)";

asio::awaitable<void> tagged() {
  auto ex = co_await asio::this_coro::executor;
  cp::child c = cp::spawn(
      ex, cp::command::shell(script).std_out(cp::stdio::pipe()).std_err(cp::stdio::pipe()));
  // The readers belong to the child; the merged reader only borrows them.
  cp::merged_reader lines(c.std_out(), c.std_err());
  while (auto line = co_await lines.async_read_line())
    std::cout << (line->from == cp::source::out ? "  [stdout] " : "  [stderr] ") << line->text
              << '\n';
  std::cout << "  exit: " << (co_await c.async_wait()).to_string() << '\n';
}

asio::awaitable<void> merged() {
  auto ex = co_await asio::this_coro::executor;
  cp::child c = cp::spawn(ex, cp::command::shell(script).std_out(cp::stdio::pipe()).merge_stderr());
  // std_err() is not open: both streams arrive on std_out().
  while (auto line = co_await c.std_out().async_read_line()) std::cout << "  " << *line << '\n';
  std::cout << "  exit: " << (co_await c.async_wait()).to_string() << '\n';
}

int main() {
  asio::io_context ctx;
  asio::co_spawn(
      ctx,
      []() -> asio::awaitable<void> {
        std::cout << "merged_reader (tagged, arrival order):\n";
        co_await tagged();
        std::cout << "merge_stderr() (one pipe, write order):\n";
        co_await merged();
      },
      // Rethrow, so an error ends ctx.run() with an exception instead of vanishing.
      [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });
  ctx.run();
}
