// pool_map: multiprocessing.Pool's map, imap and imap_unordered, and a progress bar on a long
// map over a process_pool.
//
//   1. map: blocks for every result, in input order (chunksize: Python's heuristic)
//   2. imap: a stream in input order, over an unbounded input read a few chunks ahead; stop
//      whenever you like
//   3. imap_unordered: results in the order they finish
//   4. process_pool::map with map_options: chunks of 8, a progress bar on stderr
#include <coproc/pool.hpp>
#include <coproc/process_pool.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iostream>
#include <optional>
#include <ranges>
#include <string>
#include <thread>
#include <vector>

namespace cp = coproc;

int square(int x) { return x * x; }

// Steps of the Collatz sequence from n down to 1.
int collatz_steps(int n) {
  int steps = 0;
  for (std::uint64_t x = static_cast<std::uint64_t>(n); x != 1; ++steps)
    x = x % 2 == 0 ? x / 2 : 3 * x + 1;
  return steps;
}

int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

// A few milliseconds of arithmetic: an estimate of pi from 600,000 pseudo-random points.
double estimate_pi(int seed) {
  std::uint64_t x = static_cast<std::uint64_t>(seed) * 2654435761u + 1;
  int inside = 0;
  constexpr int points = 600'000;
  for (int i = 0; i < points; ++i) {
    x = x * 6364136223846793005u + 1442695040888963407u;
    const double a = static_cast<double>(x >> 11) / 9007199254740992.0;
    x = x * 6364136223846793005u + 1442695040888963407u;
    const double b = static_cast<double>(x >> 11) / 9007199254740992.0;
    inside += a * a + b * b <= 1.0 ? 1 : 0;
  }
  return 4.0 * inside / points;
}

int main() {
  int failures = 0;
  {
    cp::pool pool(cp::pool_options{.workers = 2});

    // 1. pool.map(square, range(10))
    std::vector<int> inputs;
    for (int i = 0; i < 10; ++i) inputs.push_back(i);
    const std::vector<int> squares = pool.map(square, inputs);
    std::cout << "map:";
    for (int v : squares) std::cout << ' ' << v;
    std::cout << '\n';
    failures += squares.back() == 81 ? 0 : 1;

    // 2. for n, steps in zip(count(1), pool.imap(collatz_steps, count(1), 16)): an input without
    //    end, read 16 at a time a few chunks ahead of this loop.
    {
      auto steps = pool.imap(collatz_steps, std::views::iota(1), 16);
      int n = 0;
      for (int s : steps) {
        ++n;
        if (s > 200) {
          std::cout << "imap: the first number whose Collatz sequence takes over 200 steps is " << n
                    << " (" << s << " steps)\n";
          break;
        }
      }
      failures += n == 2463 ? 0 : 1;
    }  // destroying the stream stops reading the input; the chunks already sent still run

    // 3. In the order they finish, which depends on the worker each task went to.
    const std::vector<int> delays = {300, 200, 100, 10};
    std::cout << "imap_unordered:";
    for (int ms : pool.imap_unordered(sleep_ms, delays)) std::cout << ' ' << ms;
    std::cout << '\n';

    pool.close();
    pool.join();
  }

  // 4. A long map: 400 tasks, 8 to a chunk, with a progress bar. The callback runs on the
  //    pool's event-loop thread after each chunk; `total` is known once the input is exhausted,
  //    and this input's size is known from the start anyway.
  {
    cp::process_pool pool;  // available_cpus() workers, its own event-loop thread
    std::vector<int> seeds;
    for (int i = 0; i < 400; ++i) seeds.push_back(i);
    const std::size_t total = seeds.size();
    auto bar = [total](std::size_t done, std::optional<std::size_t>) {
      const std::size_t width = 40, filled = done * width / total;
      std::cerr << "\r[" << std::string(filled, '#') << std::string(width - filled, ' ') << "] "
                << done << '/' << total << std::flush;
    };
    const auto start = std::chrono::steady_clock::now();
    double sum = 0;
    for (double pi : pool.map(estimate_pi, seeds, {.chunksize = 8, .progress = bar})) sum += pi;
    std::cerr << '\n';
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    std::cout << "map with progress: mean of " << total << " estimates of pi = " << sum / total
              << " (" << pool.size() << " workers, " << took.count() << " s)\n";
    failures += sum / total > 3.13 && sum / total < 3.15 ? 0 : 1;
  }
  return failures == 0 ? 0 : 1;
}
