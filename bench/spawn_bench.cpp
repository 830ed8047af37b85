// Spawn throughput: spawn + wait of /bin/true with 64 children in flight.
//
//   spawn_*      coproc::spawn + child::async_wait (64 coroutines on one io_context)
//                vs a C loop posix_spawn + waitpid(-1) keeping 64 in flight
//                vs Python asyncio.create_subprocess_exec + wait, 64 tasks.
//   live*_*      the same coproc and C loops while `--live` (2000) sleeping children that
//                the same program started are alive (coproc children with an async_wait
//                pending each; the C ones tracked by pid), as cost per spawn.
//
// Options: --runs N (5), --total K spawns per measurement (2000), --in-flight F (64),
// --live L sleeping children (2000), --live-total spawns timed among them (1000).
#include <coproc/coproc.hpp>

#include "bench_common.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <sys/syscall.h>
#include <exception>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace cp = coproc;

namespace {

char arg_true[] = "/bin/true";
char arg_sleep[] = "/bin/sleep";
char arg_1000[] = "1000";

void rethrow(const std::exception_ptr& e) {
  if (e) std::rethrow_exception(e);
}

// --- coproc ------------------------------------------------------------------------------

// `in_flight` coroutines each spawn /bin/true and await its exit until `total` were started.
// Runs `ctx` only until those coroutines finish (other work on it, such as waits on
// sleeping children, stays pending). Returns the elapsed seconds.
double coproc_spawn_loop(asio::io_context& ctx, int total, int in_flight) {
  const cp::command cmd{"/bin/true"};  // stdio inherited, as in the C loop
  int started = 0, finished = 0, failed = 0;
  auto worker = [&]() -> asio::awaitable<void> {
    while (started < total) {
      ++started;
      cp::child c = cp::spawn(ctx.get_executor(), cmd);
      cp::exit_status st = co_await c.async_wait();
      if (!st.success()) ++failed;
    }
    ++finished;
  };
  const auto t0 = bench::clock::now();
  for (int i = 0; i < in_flight; ++i) asio::co_spawn(ctx, worker(), rethrow);
  bench::run_until(ctx, [&] { return finished == in_flight; });
  const double s = bench::seconds_since(t0);
  if (failed) throw std::runtime_error("coproc: /bin/true failed");
  return s;
}

double coproc_spawn_seconds(int total, int in_flight) {
  asio::io_context ctx;
  return coproc_spawn_loop(ctx, total, in_flight);
}

double coproc_live_seconds(int live, int total, int in_flight) {
  asio::io_context ctx;
  const auto sleep_cmd = cp::command{"/bin/sleep", "1000"}
                             .std_in(cp::stdio::null())
                             .std_out(cp::stdio::null())
                             .std_err(cp::stdio::null());
  std::vector<cp::child> sleepers;
  sleepers.reserve(static_cast<std::size_t>(live));
  int reaped = 0;
  for (int i = 0; i < live; ++i) {
    sleepers.push_back(cp::spawn(ctx.get_executor(), sleep_cmd));
    // A real program awaits every child it owns.
    sleepers.back().async_wait([&](cp::error_code, cp::exit_status) { ++reaped; });
  }
  const double s = coproc_spawn_loop(ctx, total, in_flight);
  for (auto& c : sleepers) c.kill();
  bench::run_until(ctx, [&] { return reaped == live; });
  sleepers.clear();
  return s;
}

// --- C baseline ----------------------------------------------------------------------------

pid_t c_spawn(char* const* argv, const posix_spawn_file_actions_t* fa = nullptr) {
  pid_t pid;
  const int rc = posix_spawn(&pid, argv[0], fa, nullptr, argv, environ);
  if (rc != 0) bench::die("posix_spawn", rc);
  return pid;
}

// posix_spawn + waitpid(-1) keeping `in_flight` children of /bin/true running until `total`
// were started. Children started before the loop stay alive, so waitpid(-1) only ever
// returns the loop's own.
double c_spawn_loop(int total, int in_flight) {
  char* argv[] = {arg_true, nullptr};
  int started = 0, running = 0;
  const auto t0 = bench::clock::now();
  for (; running < in_flight && started < total; ++running, ++started) c_spawn(argv);
  while (running > 0) {
    int st;
    if (waitpid(-1, &st, 0) < 0) {
      if (errno == EINTR) continue;
      bench::die("waitpid");
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bench::die("/bin/true failed", 0);
    --running;
    if (started < total) {
      c_spawn(argv);
      ++started;
      ++running;
    }
  }
  return bench::seconds_since(t0);
}

struct c_live_result {
  double plain;   // sleepers tracked by pid: the C floor
  double pidfds;  // the same after pidfd_open on every sleeper (diagnostic)
};

c_live_result c_live_seconds(int live, int total, int in_flight) {
  char* argv[] = {arg_sleep, arg_1000, nullptr};
  std::vector<pid_t> sleepers;
  sleepers.reserve(static_cast<std::size_t>(live));
  {
    bench::null_stdio_actions null_stdio;
    for (int i = 0; i < live; ++i) sleepers.push_back(c_spawn(argv, &null_stdio.fa));
  }

  c_live_result r{};
  r.plain = c_spawn_loop(total, in_flight);
  std::vector<int> fds;
  for (pid_t p : sleepers) {
    const long fd = syscall(SYS_pidfd_open, p, 0);
    if (fd < 0) bench::die("pidfd_open");  // always close-on-exec
    fds.push_back(static_cast<int>(fd));
  }
  r.pidfds = c_spawn_loop(total, in_flight);
  for (int fd : fds) close(fd);
  for (pid_t p : sleepers) kill(p, SIGKILL);
  for (pid_t p : sleepers)
    while (waitpid(p, nullptr, 0) < 0 && errno == EINTR) {
    }
  return r;
}

// --- Python asyncio peer ---------------------------------------------------------------------

constexpr const char* python_spawn = R"(
import asyncio, sys, time
total, in_flight = int(sys.argv[1]), int(sys.argv[2])
async def main():
    started = 0
    async def worker():
        nonlocal started
        while started < total:
            started += 1
            p = await asyncio.create_subprocess_exec('/bin/true')
            if await p.wait() != 0:
                raise SystemExit('/bin/true failed')
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - t0
print(total / asyncio.run(main()))
)";

double python_spawn_rate(int total, int in_flight) {
  try {
    return bench::parse_number(bench::capture(
        {"python3", "-c", python_spawn, std::to_string(total), std::to_string(in_flight)}));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "spawn_bench: python peer: %s\n", e.what());
    return std::nan("");
  }
}

}  // namespace

int main(int argc, char** argv) try {
  bench::options opt(argc, argv);
  const int runs = static_cast<int>(opt.get("runs", 5));
  const int total = static_cast<int>(opt.get("total", 2000));
  const int in_flight = static_cast<int>(opt.get("in-flight", 64));
  const int live = static_cast<int>(opt.get("live", 2000));
  const int live_total = static_cast<int>(opt.get("live-total", 1000));
  const bool python = opt.get("python", 1) != 0;
  opt.check();
  bench::raise_nofile_limit();

  std::vector<double> co, c, py, co_live, c_live, c_live_fd;
  for (int run = 0; run < runs; ++run) {
    // Alternate which side goes first, so neither always meets a warmer machine.
    const bool coproc_first = run % 2 == 0;
    for (int side = 0; side < 2; ++side) {
      if ((side == 0) == coproc_first) {
        co.push_back(total / coproc_spawn_seconds(total, in_flight));
        co_live.push_back(coproc_live_seconds(live, live_total, in_flight) / live_total * 1e6);
      } else {
        c.push_back(total / c_spawn_loop(total, in_flight));
        const auto r = c_live_seconds(live, live_total, in_flight);
        c_live.push_back(r.plain / live_total * 1e6);
        c_live_fd.push_back(r.pidfds / live_total * 1e6);
      }
    }
    if (python) py.push_back(python_spawn_rate(total, in_flight));
  }

  bench::figure("spawn_total", total, "spawns", 0);
  bench::figure("spawn_in_flight", in_flight, "children", 0);
  bench::figure("spawn_coproc", bench::median(co), "spawns/s", 0);
  bench::figure("spawn_c_posix_spawn", bench::median(c), "spawns/s", 0);
  bench::ratio("spawn_coproc_vs_c", bench::median(co) / bench::median(c));
  if (python) {
    bench::figure("spawn_python_asyncio", bench::median(py), "spawns/s", 0);
    bench::ratio("spawn_coproc_vs_python", bench::median(co) / bench::median(py));
  }
  bench::figure("live_children", live, "children", 0);
  bench::figure("live_coproc", bench::median(co_live), "us/spawn", 1);
  bench::figure("live_c_posix_spawn", bench::median(c_live), "us/spawn", 1);
  bench::ratio("live_coproc_vs_c_cost", bench::median(co_live) / bench::median(c_live));
  bench::figure("live_c_posix_spawn_pidfds", bench::median(c_live_fd), "us/spawn", 1);
  bench::ratio("live_coproc_vs_c_pidfds_cost", bench::median(co_live) / bench::median(c_live_fd));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "spawn_bench: %s\n", e.what());
  return 1;
}
