// timeout_kill_tree: a command that outlives its timeout, ignores SIGTERM and has started
// grandchildren. async_run's kill ladder (SIGTERM, kill_grace, SIGKILL) reaches the whole
// tree through its process group, and the output written before the timeout is kept.
#include <coproc/coproc.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace cp = coproc;
using namespace std::chrono_literals;

// The shell ignores SIGTERM, and so do the two sleeps it starts (an ignored signal stays
// ignored across fork and exec). Only SIGKILL can end this tree.
const char* const script = R"(
  trap '' TERM
  echo "shell $$"
  sleep 1000 & echo "grandchild $!"
  sleep 1000 & echo "grandchild $!"
  echo "waiting for ever"
  wait
)";

// True while `pid` exists and is not a zombie. A killed grandchild is re-parented to init
// and stays a zombie until init reaps it (some container inits never do); it runs no code.
bool alive(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const char state = line.at(line.rfind(')') + 2);  // "pid (comm) S ..."
  return state != 'Z' && state != 'X';
}

asio::awaitable<void> demo() {
  auto ex = co_await asio::this_coro::executor;
  auto cmd = cp::command::shell(script)
                 .timeout(500ms)        // then SIGTERM to the group...
                 .kill_grace(300ms)     // ...and SIGKILL 300 ms later if anything is left
                 .new_process_group();  // so the signals reach the grandchildren too

  const auto start = std::chrono::steady_clock::now();
  // as_tuple: the timeout arrives as an error code beside the partial result, instead of
  // an exception that would take the result with it.
  auto [ec, r] = co_await cp::async_run(ex, cmd, asio::as_tuple(asio::use_awaitable));
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - start);

  std::cout << "async_run completed after " << ms.count() << " ms\n"
            << "  error:  " << ec.message() << (ec == cp::errc::timed_out ? " (timed_out)" : "")
            << "\n  status: " << r.status.to_string() << "\n  output kept:\n";
  std::vector<int> pids;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    std::cout << "    " << line << '\n';
    std::istringstream words(line);
    std::string word;
    int pid;
    if (words >> word >> pid) pids.push_back(pid);  // "shell N" and "grandchild N"
  }

  // The shell was reaped before async_run completed; SIGKILL went to its grandchildren at
  // the same moment, but their deaths may take the kernel a moment more.
  asio::steady_timer pause(ex);
  for (int tries = 0; tries < 100; ++tries) {
    bool any = false;
    for (int pid : pids) any = any || alive(pid);
    if (!any) break;
    pause.expires_after(10ms);
    co_await pause.async_wait(asio::use_awaitable);
  }
  for (int pid : pids) std::cout << "  pid " << pid << (alive(pid) ? ": ALIVE\n" : ": gone\n");
}

int main() {
  asio::io_context ctx;
  asio::co_spawn(ctx, demo(), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
  ctx.run();
}
