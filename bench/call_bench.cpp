// Round trip of running a trivial function in a fresh child process and getting its result.
//
//   call_coproc_fork     co_await coproc::async_call(add, 2, 3): fork, result frame, reap
//   call_coproc_spawn    the same with start_method::spawn (re-executes this program)
//   call_c_fork          C: pipe2 + fork, the child writes an int and _exits, the parent reads
//                        it and waitpid()s: the floor for a forked call with a result
//   call_python_*        Python multiprocessing: Process(target=operator.neg, args=(i,))
//                        .start(); .join(), with the fork and the spawn contexts (no result
//                        is even returned)
//
// All sequential (one call at a time), as cost per call in microseconds.
// Options: --runs N (5), --calls K per measurement (300), --spawn-calls K (100),
// --python 0 to skip the Python peer.
#include <coproc/coproc.hpp>

#include "bench_common.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <sys/wait.h>
#include <unistd.h>
#include <exception>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace cp = coproc;

namespace {

int add(int a, int b) { return a + b; }
COPROC_REGISTER(add);

// Microseconds per call of `calls` sequential async_calls.
double coproc_call_us(int calls, cp::start_method method) {
  asio::io_context ctx;
  long sum = 0;
  std::exception_ptr error;
  const auto t0 = bench::clock::now();
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        cp::call_options options;
        options.method = method;
        for (int i = 0; i < calls; ++i) sum += co_await cp::async_call(options, add, i, 1);
      },
      [&](std::exception_ptr e) { error = e; });
  ctx.run();
  const double s = bench::seconds_since(t0);
  if (error) std::rethrow_exception(error);
  if (sum != static_cast<long>(calls) * (calls + 1) / 2) throw std::runtime_error("wrong sum");
  return s / calls * 1e6;
}

double c_fork_us(int calls) {
  long sum = 0;
  const auto t0 = bench::clock::now();
  for (int i = 0; i < calls; ++i) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) bench::die("pipe2");
    const pid_t pid = fork();
    if (pid < 0) bench::die("fork");
    if (pid == 0) {
      const int r = add(i, 1);
      ssize_t w = write(p[1], &r, sizeof r);
      _exit(w == sizeof r ? 0 : 1);
    }
    close(p[1]);
    int r = 0;
    if (read(p[0], &r, sizeof r) != sizeof r) bench::die("read");
    close(p[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    sum += r;
  }
  const double s = bench::seconds_since(t0);
  if (sum != static_cast<long>(calls) * (calls + 1) / 2) throw std::runtime_error("wrong sum");
  return s / calls * 1e6;
}

constexpr const char* python_process = R"(
import multiprocessing as mp, operator, sys, time
# A target importable by name, so the spawn context can pickle it from a `python3 -c` script.
f = operator.neg
if __name__ == '__main__':
    method, calls = sys.argv[1], int(sys.argv[2])
    ctx = mp.get_context(method)
    t0 = time.perf_counter()
    for i in range(calls):
        p = ctx.Process(target=f, args=(i,))
        p.start()
        p.join()
        if p.exitcode != 0:
            raise SystemExit('child failed')
    print((time.perf_counter() - t0) / calls * 1e6)
)";

double python_us(const char* method, int calls) {
  try {
    return bench::parse_number(
        bench::capture({"python3", "-c", python_process, method, std::to_string(calls)}));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "call_bench: python peer: %s\n", e.what());
    return std::nan("");
  }
}

}  // namespace

int main(int argc, char** argv) try {
  cp::worker_hook(argc, argv);
  bench::options opt(argc, argv);
  const int runs = static_cast<int>(opt.get("runs", 5));
  const int calls = static_cast<int>(opt.get("calls", 300));
  const int spawn_calls = static_cast<int>(opt.get("spawn-calls", 100));
  const bool python = opt.get("python", 1) != 0;
  opt.check();

  std::vector<double> co_fork, co_spawn, c_fork, py_fork, py_spawn;
  for (int run = 0; run < runs; ++run) {
    if (run % 2 == 0) {
      co_fork.push_back(coproc_call_us(calls, cp::start_method::fork));
      c_fork.push_back(c_fork_us(calls));
    } else {
      c_fork.push_back(c_fork_us(calls));
      co_fork.push_back(coproc_call_us(calls, cp::start_method::fork));
    }
    co_spawn.push_back(coproc_call_us(spawn_calls, cp::start_method::spawn));
    if (python) {
      py_fork.push_back(python_us("fork", calls));
      py_spawn.push_back(python_us("spawn", std::max(spawn_calls / 5, 5)));
    }
  }

  bench::figure("call_coproc_fork", bench::median(co_fork), "us/call", 1);
  bench::figure("call_c_fork_pipe_waitpid", bench::median(c_fork), "us/call", 1);
  bench::ratio("call_coproc_fork_vs_c_cost", bench::median(co_fork) / bench::median(c_fork));
  bench::figure("call_coproc_spawn", bench::median(co_spawn), "us/call", 1);
  if (python) {
    bench::figure("call_python_process_fork", bench::median(py_fork), "us/call", 1);
    bench::ratio("call_coproc_fork_vs_python_fork_speedup",
                 bench::median(py_fork) / bench::median(co_fork));
    bench::figure("call_python_process_spawn", bench::median(py_spawn), "us/call", 1);
    bench::ratio("call_coproc_spawn_vs_python_spawn_speedup",
                 bench::median(py_spawn) / bench::median(co_spawn));
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "call_bench: %s\n", e.what());
  return 1;
}
