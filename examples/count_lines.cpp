// count_lines: the fast path for line-oriented output. `async_for_each_line` hands every
// line to a callback as a string_view into the reader's buffer: no allocation and no
// completion per line, one completion at end-of-file.
#include <coproc/coproc.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <iostream>
#include <map>
#include <string_view>

namespace asio = boost::asio;
namespace cp = coproc;

asio::awaitable<void> count() {
  auto ex = co_await asio::this_coro::executor;
  // 200,000 numbered lines from seq; count them by their last digit.
  cp::child c = cp::spawn(ex, cp::command{"seq", "200000"}.std_out(cp::stdio::pipe()));
  std::map<char, std::size_t> by_digit;
  std::size_t lines = co_await c.std_out().async_for_each_line(
      [&](std::string_view line) { ++by_digit[line.empty() ? '?' : line.back()]; });
  cp::exit_status st = co_await c.async_wait();
  std::cout << lines << " lines, " << st.to_string() << '\n';
  for (auto [digit, n] : by_digit) std::cout << "  ending in " << digit << ": " << n << '\n';
}

int main() {
  asio::io_context ctx;
  asio::co_spawn(ctx, count(), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
  ctx.run();
}
