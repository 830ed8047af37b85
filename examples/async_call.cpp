// async_call: one function call in a fresh child process, awaited like any Asio operation
// (Python: `concurrent.futures.ProcessPoolExecutor().submit(fn, *args).result()` with a pool
// of one, or `multiprocessing.Pool(1).apply(fn, args)`).
//
//   1. fork (the default): any callable, a lambda capturing the parent's data included
//   2. spawn: the program re-executes itself and runs a function registered with
//      COPROC_REGISTER; main calls coproc::worker_hook first (Python's freeze_support)
//   3. an exception thrown in the child arrives as its own type (register_exception)
//   4. a child that dies without a result: process_error naming the signal
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

std::uint64_t fib(int n) { return n < 2 ? static_cast<std::uint64_t>(n) : fib(n - 1) + fib(n - 2); }
COPROC_REGISTER(fib);  // a name for the spawn start method; parameters and result encodable

struct parse_error : std::runtime_error {
  using std::runtime_error::runtime_error;  // constructible from a std::string
};

int parse_port(std::string text) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos)
    throw parse_error("not a port number: \"" + text + "\"");
  return std::stoi(text);
}
COPROC_REGISTER(parse_port);

asio::awaitable<int> demo() {
  int failures = 0;

  // 1. fork: the child is a copy of this process, so the lambda may capture anything.
  const std::vector<int> data = {3, 1, 4, 1, 5, 9, 2, 6};
  auto sum_in_child = [&data] {
    long sum = 0;
    for (int v : data) sum += v;
    return sum;
  };
  const long sum = co_await cp::async_call(sum_in_child);
  const std::uint64_t forked = co_await cp::async_call(fib, 30);
  std::cout << "fork:  sum " << sum << ", fib(30) " << forked << '\n';
  failures += sum == 31 && forked == 832040 ? 0 : 1;

  // 2. spawn: a new program image (this one, from /proc/self/exe); the arguments and the
  //    result are encoded. Safe in a multi-threaded parent, where fork is not.
  cp::call_options spawn{.method = cp::start_method::spawn, .name = "fib-worker"};
  const std::uint64_t spawned = co_await cp::async_call(spawn, fib, 31);
  std::cout << "spawn: fib(31) " << spawned << '\n';
  failures += spawned == 1346269 ? 0 : 1;

  // 3. The child's exception, rethrown here as a parse_error (registered in main).
  const std::string bad = "80a";  // named locals, not temporaries, in co_await expressions
  try {
    co_await cp::async_call(spawn, parse_port, bad);
    ++failures;
  } catch (const parse_error& e) {
    std::cout << "spawn: parse_error: " << e.what() << '\n';
  }

  // 4. No result at all: the child died of a signal.
  auto crash = [] {
    rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    ::raise(SIGABRT);
    return 0;
  };
  cp::call_options named{.name = "crasher"};  // the name appears in the error
  try {
    co_await cp::async_call(named, crash);
    ++failures;
  } catch (const cp::process_error& e) {
    std::cout << "fork:  " << e.what() << '\n';
    failures += e.status().signal() == SIGABRT ? 0 : 1;
  }
  co_return failures;
}

int main(int argc, char** argv) {
  // In the process that catches: parse_error then arrives as itself, not as remote_error.
  cp::register_exception<parse_error>();
  // Then at once (registering is cheap and harmless in a spawned child): in a child started
  // by the spawn method this runs the requested function and exits; elsewhere it returns.
  cp::worker_hook(argc, argv);

  asio::io_context ctx;
  int failures = 1;
  asio::co_spawn(ctx, demo(), [&](std::exception_ptr e, int n) {
    if (e) std::rethrow_exception(e);
    failures = n;
  });
  ctx.run();
  return failures == 0 ? 0 : 1;
}
