// executor_submit: Python's concurrent.futures.ProcessPoolExecutor, translated. A pool of worker
// processes runs submitted functions; each submission gives a future.
//
//   1. blocking: a pool with its own event-loop thread, submit(...).get(), shutdown()
//      (Python: `with ProcessPoolExecutor(2) as ex: ex.submit(fib, 25).result()`)
//   2. coroutine: `co_await pool.submit(f, x)` on the program's io_context, and several
//      futures taken as they finish (as_completed)
//   3. an exception thrown in a worker arrives as its own type (register_exception)
//   4. a worker that crashes: its task fails with worker_died, the pool starts a replacement
//      and carries on (Python's ProcessPoolExecutor would be broken for good)
#include <coproc/coproc.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <csignal>
#include <cstdint>
#include <exception>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

namespace asio = boost::asio;
namespace cp = coproc;

// Tasks are plain functions (or captureless lambdas): with the fork start method the workers
// are copies of this program and already hold the code; only the arguments and the result
// travel, encoded.
std::uint64_t fib(int n) { return n < 2 ? static_cast<std::uint64_t>(n) : fib(n - 1) + fib(n - 2); }

struct parse_error : std::runtime_error {
  using std::runtime_error::runtime_error;  // constructible from a std::string
};

int parse_port(std::string text) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos)
    throw parse_error("not a port number: \"" + text + "\"");
  return std::stoi(text);
}

int crash(int) {
  rlimit no_core{0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  ::raise(SIGABRT);  // the worker dies with the task in hand
  return 0;
}

// 1. Blocking use from plain code: the pool runs its own event loop on a thread of its own.
int blocking_style() {
  int failures = 0;
  cp::process_pool pool(cp::pool_options{.workers = 2, .name = "fib"});
  std::vector<cp::future<std::uint64_t>> futures;
  for (int n : {24, 25, 26, 27}) futures.push_back(pool.submit(fib, n));  // ex.submit(fib, n)
  std::cout << "blocking: " << pool.size() << " workers, pids";
  for (int pid : pool.worker_pids()) std::cout << ' ' << pid;
  std::cout << "\n  results:";
  for (auto& f : futures) std::cout << ' ' << f.get();  // f.result()
  std::cout << '\n';
  failures += futures[3].get() == 196418 ? 0 : 1;
  pool.shutdown();  // ex.shutdown(wait=True): every task done, every worker reaped
  const cp::pool_stats s = pool.stats();
  std::cout << "  after shutdown: " << s.done << " done, " << s.workers << " workers left\n";
  return failures;
}

// 2, 3 and 4 in a coroutine: the pool's I/O runs on this io_context, with everything else.
asio::awaitable<int> coroutine_style(cp::process_pool& pool) {
  int failures = 0;

  // 2. A future is an Asio operation: co_await it directly...
  const std::uint64_t f30 = co_await pool.submit(fib, 30);
  std::cout << "coroutine: fib(30) = " << f30 << '\n';
  failures += f30 == 832040 ? 0 : 1;

  // ... or keep several, running in parallel, and take them as they finish (as_completed).
  std::vector<cp::future<std::uint64_t>> futures;
  for (int n = 29; n >= 26; --n) futures.push_back(pool.submit(fib, n));
  auto finished = cp::as_completed(futures);
  std::cout << "  fib(29..26) as they finish:";
  while (auto f = co_await finished.async_next()) std::cout << ' ' << co_await f->async_get();
  std::cout << '\n';

  // 3. The worker's exception, rethrown here as a parse_error (registered in main).
  const std::string bad = "80a";  // named locals, not temporaries, in co_await expressions
  try {
    co_await pool.submit(parse_port, bad);
    ++failures;
  } catch (const parse_error& e) {
    std::cout << "  parse_error: " << e.what() << '\n';
  }

  // 4. A crash fails only the task that was running, with worker_died...
  try {
    co_await pool.submit(crash, 0);
    ++failures;
  } catch (const cp::worker_died& e) {
    std::cout << "  worker_died: " << e.what() << '\n';
    failures += e.status().signal() == SIGABRT ? 0 : 1;
  }
  // ... and the pool goes on with a fresh worker in its place.
  const std::uint64_t after = co_await pool.submit(fib, 20);
  std::cout << "  after the crash: fib(20) = " << after << ", worker restarts "
            << pool.stats().worker_restarts << '\n';
  failures += after == 6765 ? 0 : 1;

  co_await pool.async_shutdown();  // shutdown(wait=True), without blocking the event loop
  co_return failures;
}

int main() {
  // In the process that catches: parse_error then arrives as itself, not as remote_error.
  cp::register_exception<parse_error>();

  int failures = blocking_style();

  asio::io_context ctx;
  cp::process_pool pool(ctx.get_executor(), {.workers = 2, .name = "compute"});
  asio::co_spawn(ctx, coroutine_style(pool), [&](std::exception_ptr e, int n) {
    if (e) std::rethrow_exception(e);
    failures += n;
  });
  ctx.run();
  return failures == 0 ? 0 : 1;
}
