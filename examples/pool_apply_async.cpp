// pool_apply_async: multiprocessing.Pool's apply and apply_async, with results delivered to
// callbacks, and the AsyncResult handle.
//
//   1. apply: one call in a worker, blocking for its value
//   2. apply_async with a callback, Python's `pool.apply_async(f, (i,), callback=results.append)`
//   3. error_callback: the task raised; successful() is false and get() rethrows
//   4. get(timeout) on a slow task: timed_out, the task goes on; ready(), wait()
//   5. close() and join()
#include <coproc/pool.hpp>

#include <boost/system/system_error.hpp>

#include <chrono>
#include <cstdint>
#include <exception>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace cp = coproc;
using namespace std::chrono_literals;

std::uint64_t fib(int n) { return n < 2 ? static_cast<std::uint64_t>(n) : fib(n - 1) + fib(n - 2); }

int square(int x) { return x * x; }

int divide(int a, int b) {
  if (b == 0) throw std::domain_error("divide: division by zero");
  return a / b;
}

int slow_square(int x, int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return x * x;
}

int main() {
  int failures = 0;
  cp::pool pool(cp::pool_options{.workers = 2});

  // 1. pool.apply(fib, (25,))
  const std::uint64_t f25 = pool.apply(fib, 25);
  std::cout << "apply: fib(25) = " << f25 << '\n';
  failures += f25 == 75025 ? 0 : 1;

  // 2. Callbacks run on the pool's event-loop thread, one at a time, each before its result is
  //    ready: after wait() the main thread sees what they stored.
  std::vector<int> results;
  std::vector<cp::pool::async_result<int>> pending;
  for (int i = 0; i < 8; ++i)
    pending.push_back(pool.apply_async(square, std::tuple{i},
                                       [&results](const int& v) { results.push_back(v); }));
  for (auto& r : pending) r.wait();
  std::cout << "apply_async: callbacks stored";
  for (int v : results) std::cout << ' ' << v;  // completion order
  std::cout << '\n';
  failures += results.size() == 8 ? 0 : 1;

  // 3. The error_callback gets the exception; the result rethrows it as its own type.
  std::string reported;
  auto bad = pool.apply_async(
      divide, std::tuple{1, 0}, [](const int&) { std::cout << "never called\n"; },
      [&reported](std::exception_ptr e) {
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& x) {
          reported = x.what();
        }
      });
  bad.wait();
  std::cout << "error_callback: " << reported << "; ready " << bad.ready() << ", successful "
            << bad.successful() << '\n';
  try {
    bad.get();
    ++failures;
  } catch (const std::domain_error& e) {
    std::cout << "  get() rethrows std::domain_error: " << e.what() << '\n';
  }

  // 4. A slow task: get(timeout) gives up, the task does not.
  auto slow = pool.apply_async(slow_square, std::tuple{7, 300});
  std::cout << "slow task: ready " << slow.ready() << '\n';
  try {
    slow.get(50ms);
    ++failures;
  } catch (const boost::system::system_error& e) {  // Python: multiprocessing.TimeoutError
    std::cout << "  get(50ms): " << (e.code() == cp::errc::timed_out ? "timed out" : e.what())
              << '\n';
  }
  const bool within = slow.wait(2s);  // true: ready within the time
  std::cout << "  wait(2s): " << within << ", get() = " << slow.get() << ", successful "
            << slow.successful() << '\n';
  failures += slow.get() == 49 ? 0 : 1;

  // 5. No more work; wait for the workers to exit.
  pool.close();
  pool.join();
  std::cout << "joined\n";
  return failures == 0 ? 0 : 1;
}
