// parallel_commands: run a list of commands, at most 4 at a time, and report each one as it
// finishes (so the report order is completion order, not list order).
//
// The limit is a fixed number of worker coroutines that take the next command from a shared
// index. Everything runs on one thread, so the index and counters need no lock.
#include <coproc/coproc.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace cp = coproc;
using namespace std::chrono_literals;

constexpr int max_parallel = 4;

struct job_list {
  std::vector<cp::command> commands;
  std::size_t next = 0;      // the next command to start
  std::size_t finished = 0;  // for the "[3/11]" counter
  int running = 0, peak = 0;
};

// The first line of `text`, for a one-line report.
std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

asio::awaitable<void> worker(job_list& jobs) {
  auto ex = co_await asio::this_coro::executor;
  while (jobs.next < jobs.commands.size()) {
    const cp::command& cmd = jobs.commands[jobs.next++];
    jobs.peak = std::max(jobs.peak, ++jobs.running);
    const auto start = std::chrono::steady_clock::now();
    // as_tuple: a failed spawn or a timeout is a value here, not an exception, so one bad
    // command does not stop the others.
    auto [ec, r] = co_await cp::async_run(ex, cmd, asio::as_tuple(asio::use_awaitable));
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - start);
    --jobs.running;

    std::cout << '[' << ++jobs.finished << '/' << jobs.commands.size() << "] " << cmd.to_string()
              << "  (" << ms.count() << " ms)\n      ";
    if (ec)
      std::cout << "error: " << ec.message() << '\n';
    else if (!r.success())
      std::cout << r.status.to_string() << ": " << first_line(r.err) << '\n';
    else
      std::cout << first_line(r.out) << '\n';
  }
}

int main() {
  job_list jobs;
  // Shuffled sleeps finish out of list order; the rest are everyday tools.
  for (const char* s : {"0.4", "0.1", "0.3", "0.2", "0.5"})
    jobs.commands.push_back(cp::command::shell(std::string("sleep ") + s + "; echo slept " + s));
  jobs.commands.push_back(cp::command{"wc", "-l", "/etc/passwd"});
  jobs.commands.push_back(cp::command{"uname", "-sr"});
  jobs.commands.push_back(cp::command{"sha256sum", "/etc/hostname"});
  jobs.commands.push_back(cp::command{"ls", "/no/such/dir"});         // exits with 2
  jobs.commands.push_back(cp::command{"no-such-program-here"});       // cannot start
  jobs.commands.push_back(cp::command{"sleep", "5"}.timeout(300ms));  // killed at 300 ms

  asio::io_context ctx;
  for (int i = 0; i < max_parallel; ++i)
    asio::co_spawn(ctx, worker(jobs), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
  ctx.run();
  std::cout << jobs.finished << " commands, at most " << jobs.peak << " at a time\n";
}
