// adb_devices: orchestrate the real Android Debug Bridge from one coroutine.
//
//   1. start the adb server                  (run to completion, check the exit)
//   2. stream `adb devices` line by line     (spawn, stderr merged into stdout)
//   3. `adb version` and `adb devices -l`    (concurrently, each with a timeout)
//   4. stop the server
//
// Works with no device attached (the list is empty). Without adb on PATH it says how to
// install it and exits with 2.
#include <coproc/coproc.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <exception>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace cp = coproc;
using namespace std::chrono_literals;

// Prints what a command did: its status (or error), then its output, indented.
void report(const char* what, cp::error_code ec, const cp::completed& r) {
  std::cout << what << ": " << (ec ? ec.message() : r.status.to_string()) << '\n';
  for (const std::string* text : {&r.out, &r.err}) {
    std::istringstream lines(*text);
    for (std::string line; std::getline(lines, line);) std::cout << "    " << line << '\n';
  }
}

asio::awaitable<int> orchestrate() {
  // 1. subprocess.run(["adb", "start-server"], capture_output=True, check=True)
  //    A missing adb is a spawn_error, thrown before anything runs.
  try {
    cp::completed started = co_await cp::async_run(cp::command{"adb", "start-server"}.timeout(30s));
    started.check();  // non-zero exit -> process_error with the tail of stderr
    report("adb start-server", {}, started);  // "* daemon started successfully", or nothing
  } catch (const cp::spawn_error& e) {
    std::cerr << e.what()
              << "\nadb is not installed; on Debian or Ubuntu: apt-get install -y adb\n";
    co_return 2;
  }

  // 2. Popen(["adb", "devices"], stdout=PIPE, stderr=STDOUT), read line by line as it comes.
  auto ex = co_await asio::this_coro::executor;
  cp::child devices =
      cp::spawn(ex, cp::command{"adb", "devices"}.std_out(cp::stdio::pipe()).merge_stderr());
  std::vector<std::string> serials;
  while (auto line = co_await devices.std_out().async_read_line()) {
    std::cout << "  adb devices | " << *line << '\n';
    // After the "List of devices attached" header, each device is "<serial>\t<state>".
    if (auto tab = line->find('\t'); tab != std::string::npos)
      serials.push_back(line->substr(0, tab));
  }
  cp::exit_status st = co_await devices.async_wait();
  std::cout << "adb devices: " << st.to_string() << ", " << serials.size() << " device(s)\n";

  // 3. Two commands at once, each with its own timeout. wait_for_all and the error-code form
  //    (deferred, no exception) give each result on its own, even if the other one failed.
  auto [order, version_ec, version, listing_ec, listing] =
      co_await asio::experimental::make_parallel_group(
          cp::async_run(ex, cp::command{"adb", "version"}.timeout(10s), asio::deferred),
          cp::async_run(ex, cp::command{"adb", "devices", "-l"}.timeout(10s), asio::deferred))
          .async_wait(asio::experimental::wait_for_all(), asio::use_awaitable);
  report("adb version", version_ec, version);
  report("adb devices -l", listing_ec, listing);

  // 4. Stop the server we started.
  cp::completed stopped = co_await cp::async_run(cp::command{"adb", "kill-server"}.timeout(10s));
  report("adb kill-server", {}, stopped);
  const bool ok = !version_ec && !listing_ec && version.success() && listing.success();
  co_return (ok && stopped.success()) ? 0 : 1;
}

int main() {
  asio::io_context ctx;
  int rc = 1;
  asio::co_spawn(ctx, orchestrate(), [&](std::exception_ptr e, int result) {
    rc = result;
    if (!e) return;
    rc = 1;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {  // process_error from check(), errc::timed_out, ...
      std::cerr << "adb_devices: " << ex.what() << '\n';
    }
  });
  ctx.run();
  return rc;
}
