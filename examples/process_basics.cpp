// process_basics: Python's multiprocessing.Process, translated.
//
//   1. Process(target=f, args=('bob',)); start(); join(), with the pids of parent and child
//   2. is_alive(), pid, join(timeout), terminate() and exitcode, on a child that sleeps
//   3. an exception escaping the child's function: printed by the child, exit code 1
//
// The child is a fork of this program (the default start method), so `f` and its arguments
// need no encoding. The child inherits stdout; coproc flushes stdio before forking, so no
// buffered line is printed twice.
#include <coproc/coproc.hpp>

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <csignal>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>

#include <unistd.h>

namespace asio = boost::asio;
namespace cp = coproc;
using namespace std::chrono_literals;

// def info(title): print(title, os.getppid(), os.getpid())
void info(const std::string& title) {
  std::cout << title << ": parent process " << ::getppid() << ", process id " << ::getpid() << '\n';
}

// def f(name): info('function f'); print('hello', name)
void f(const std::string& name) {
  info("function f");
  std::cout << "hello " << name << '\n';
}

std::string show(std::optional<int> exitcode) {
  return exitcode ? std::to_string(*exitcode) : "None";
}

int main() {
  asio::io_context ctx;
  int failures = 0;
  std::cout << std::boolalpha;  // is_alive: true / false

  // 1. p = Process(target=f, args=('bob',)); p.start(); p.join()
  info("main line");
  cp::process p(ctx.get_executor(), f, std::string("bob"));  // the argument is copied
  p.start();
  cp::exit_status st = p.join();  // blocks; the child is reaped
  std::cout << p.name() << " (pid " << p.pid() << ") ended: " << st.to_string() << '\n';
  failures += st.success() ? 0 : 1;

  // 2. p = Process(target=time.sleep, args=(1000,)); terminate() it.
  cp::process sleeper(ctx.get_executor(), [] { ::sleep(1000); });
  std::cout << "before start: is_alive " << sleeper.is_alive() << ", pid " << sleeper.pid()
            << ", exitcode " << show(sleeper.exitcode()) << '\n';
  sleeper.start();
  // p.join(timeout=0.05) returns with the child still running: nullopt here.
  std::optional<cp::exit_status> early = sleeper.join(50ms);
  std::cout << "after start: is_alive " << sleeper.is_alive() << ", join(50ms) "
            << (early ? early->to_string() : "timed out") << ", exitcode "
            << show(sleeper.exitcode()) << '\n';
  sleeper.terminate();  // SIGTERM
  st = sleeper.join();
  std::cout << "after terminate: is_alive " << sleeper.is_alive() << ", " << st.to_string()
            << ", exitcode " << show(sleeper.exitcode()) << " (Python: -signal.SIGTERM)\n";
  failures += sleeper.exitcode() == -SIGTERM ? 0 : 1;

  // 3. An exception escaping the function: the child prints it to stderr, as Python prints a
  //    child's traceback, and exits with code 1. The parent gets only the exit code (for the
  //    exception itself, as its own type, use async_call).
  cp::process failing(ctx.get_executor(), cp::process_options{.name = "failing"},
                      [] { throw std::runtime_error("no such user"); });
  failing.start();
  failing.join();
  std::cout << failing.name() << ": exitcode " << show(failing.exitcode()) << '\n';
  failures += failing.exitcode() == 1 ? 0 : 1;
  return failures == 0 ? 0 : 1;
}
