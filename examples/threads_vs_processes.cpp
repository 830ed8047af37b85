// threads_vs_processes: the same jobs on a thread_pool (Python's ThreadPoolExecutor) and on a
// process_pool (ProcessPoolExecutor). The two have one interface, so one function template
// drives both. The timings are printed for information; they depend on the machine, its load
// and the job.
//
//   1. CPU-bound: count the primes below 1,500,000 in 12 slices, on as many workers as there
//      are CPUs (available_cpus())
//   2. I/O-bound: 32 tasks that each wait 50 ms (a stand-in for a network call), on 16 workers
//
// Each measure includes making the pool (starting its threads or forking its processes) and
// shutting it down.
#include <coproc/coproc.hpp>
#include <coproc/thread_pool.hpp>

#include <chrono>
#include <cstddef>
#include <iomanip>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

namespace cp = coproc;
using namespace std::chrono_literals;

// Plain functions: both pools can run them (a process_pool needs a function pointer or a
// captureless lambda, and encodable arguments and results; a thread_pool takes any callable).
long count_primes(long from, long to) {
  long n = 0;
  for (long k = from < 2 ? 2 : from; k < to; ++k) {
    bool prime = true;
    for (long d = 2; d * d <= k; ++d)
      if (k % d == 0) {
        prime = false;
        break;
      }
    n += prime ? 1 : 0;
  }
  return n;
}

int wait_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

constexpr long limit = 1'500'000;
constexpr long slices = 12;
constexpr int io_tasks = 32;

// The same code for either pool: submit, then take every result.
template <typename Pool>
long cpu_job(Pool& pool) {
  std::vector<cp::future<long>> parts;
  for (long i = 0; i < slices; ++i)
    parts.push_back(pool.submit(count_primes, i * limit / slices, (i + 1) * limit / slices));
  long total = 0;
  for (auto& f : parts) total += f.get();
  return total;
}

template <typename Pool>
long io_job(Pool& pool) {
  std::vector<cp::future<int>> waits;
  for (int i = 0; i < io_tasks; ++i) waits.push_back(pool.submit(wait_ms, 50));
  long total = 0;
  for (auto& f : waits) total += f.get();
  return total;
}

// Makes a pool with `options`, runs `job` on it, shuts it down; prints the time and the result.
template <typename Pool, typename Options, typename Job>
long measure(const char* label, Options options, Job job) {
  const auto start = std::chrono::steady_clock::now();
  long result = 0;
  {
    Pool pool(options);  // its own threads: blocking use with get()
    result = job(pool);
    pool.shutdown();
  }
  const std::chrono::duration<double, std::milli> ms = std::chrono::steady_clock::now() - start;
  std::cout << "  " << std::left << std::setw(26) << label << std::right << std::setw(8)
            << std::fixed << std::setprecision(1) << ms.count() << " ms   result " << result
            << '\n';
  return result;
}

int main() {
  int failures = 0;
  const std::size_t cpus = cp::available_cpus();
  std::cout << "available_cpus(): " << cpus << '\n';

  std::cout << "1. CPU-bound: primes below " << limit << " in " << slices << " slices\n";
  {
    const auto start = std::chrono::steady_clock::now();
    const long serial = count_primes(0, limit);
    const std::chrono::duration<double, std::milli> ms = std::chrono::steady_clock::now() - start;
    std::cout << "  " << std::left << std::setw(26) << "this thread alone" << std::right
              << std::setw(8) << std::fixed << std::setprecision(1) << ms.count() << " ms   result "
              << serial << '\n';
    const std::string threads = "thread_pool, " + std::to_string(cpus) + " threads";
    const std::string processes = "process_pool, " + std::to_string(cpus) + " workers";
    const long t = measure<cp::thread_pool>(threads.c_str(), cp::thread_pool_options{},
                                            cpu_job<cp::thread_pool>);
    const long p =
        measure<cp::process_pool>(processes.c_str(), cp::pool_options{}, cpu_job<cp::process_pool>);
    failures += t == serial && p == serial ? 0 : 1;
  }

  std::cout << "2. I/O-bound: " << io_tasks << " waits of 50 ms\n";
  {
    const long t = measure<cp::thread_pool>(
        "thread_pool, 16 threads", cp::thread_pool_options{.workers = 16}, io_job<cp::thread_pool>);
    const long p = measure<cp::process_pool>(
        "process_pool, 16 workers", cp::pool_options{.workers = 16}, io_job<cp::process_pool>);
    failures += t == io_tasks * 50 && p == io_tasks * 50 ? 0 : 1;
  }
  return failures == 0 ? 0 : 1;
}
