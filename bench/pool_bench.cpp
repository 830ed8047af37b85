// coproc::process_pool vs a raw C dispatcher (fork + socketpair + poll) vs Python's
// concurrent.futures.ProcessPoolExecutor and multiprocessing.Pool (bench/pool_peer.py).
//
// Every pool has WORKERS (2) worker processes started with fork, and runs square(x) = x * x on
// int inputs x = i & 0x7fff; every side's results are checked (their sum). Each pool is
// started, and its workers have run a few tasks, before any clock starts.
//
//   pool_throughput_*  TASKS (100,000) submissions with IN_FLIGHT (64) outstanding: coproc
//                      runs 64 coroutine lanes on one io_context, each looping on
//                      `co_await pool.submit(square, x)`; `_callbacks`: the same pool driven by
//                      add_done_callback, each callback submitting the next task (what the
//                      coroutine layer costs). C: the parent keeps 32 requests in
//                      flight on each worker's socketpair, poll()s both, read()s whatever
//                      responses are there (8-byte structs) and write()s as many new requests
//                      in one call; a worker read()s a batch, computes it and write()s the
//                      responses in one call. Python (--python-tasks, 20,000): a semaphore of
//                      64 and a completion callback, on ProcessPoolExecutor.submit and on
//                      Pool.apply_async. tasks/s.
//   pool_latency_*     LATENCY (20,000) timed round trips of one task at a time (after WARMUP,
//                      1000): coproc `co_await pool.submit(square, x)` from a coroutine on the
//                      pool's io_context; coproc `pool.submit(square, x).get()` on a pool with
//                      its own event loop thread, from the main thread; C: one worker, one
//                      write() of the request and one blocking read() of the response. The
//                      sides go round in chunks of 1000 (all pools and workers alive), so
//                      none meets a quieter stretch of the machine by chance. Python
//                      (--python-latency, 2000): executor.submit(square, x).result(). p50 and
//                      p99, us.
//   pool_map_*         MAP (1,000,000) inputs in chunks of CHUNKSIZE (10,000): coproc
//                      `pool.map(square, inputs, {.chunksize})` drained with `co_await
//                      async_next()` (pool on the io_context) and with the blocking range
//                      (own-thread pool); C: a chunk is a header + CHUNKSIZE ints, two chunks in
//                      flight per worker (as coproc's default buffersize), results stored in
//                      input order; Python: Pool.map(square, inputs, chunksize). items/s.
//   pool_cpu_*         CPU_TASKS (40) tasks of about CPU_MS (20) ms of integer arithmetic each
//                      (a xorshift loop, calibrated here), all submitted at once and collected
//                      with get(): a pool of available_cpus() workers vs one of 1 worker.
//                      speedup = t(1) / t(N); efficiency = speedup / N. C: the same tasks
//                      split over N forked processes vs run in one, which shows how much
//                      parallelism the machine gives at the moment (others' load included).
//
// Within a run, the coproc and C sides swap order from one run to the next. The latency sides
// run pinned to the CPU the program started on (--pin same, the default: on a small VM a
// wake-up across CPUs costs more than the round trip itself, and the scheduler's choice differs
// from process to process); --pin none leaves them to the scheduler. Throughput, map and CPU
// figures always run unpinned: they need every core.
//
// Options: --runs N (5), --workers N (2), --tasks N, --in-flight N, --latency N, --warmup N,
// --map N, --chunksize N, --cpu-tasks N, --cpu-ms N, --python 0|1 (1), --python-tasks N,
// --python-latency N, --only all|throughput|latency|map|cpu (all), --pin same|none (same),
// --side all|coproc|await|get|c (all; some sides only, for perf or strace, with --python 0:
// await = the coroutine and callback figures, get = the blocking ones), --verbose 0|1
// (0; 1: every run's values on stderr).
#include <coproc/process_pool.hpp>

#include "bench_common.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>

namespace asio = boost::asio;
namespace cp = coproc;

#ifndef COPROC_BENCH_POOL_PEER
#error "COPROC_BENCH_POOL_PEER must name bench/pool_peer.py"
#endif

namespace {

int square(int x) { return x * x; }

// About `iterations` steps of xorshift64; the result depends on every step.
std::uint64_t spin(std::uint64_t iterations) {
  std::uint64_t x = 0x9e3779b97f4a7c15u ^ iterations;
  for (std::uint64_t i = 0; i < iterations; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
  }
  return x;
}

int input(std::uint64_t i) { return static_cast<int>(i & 0x7fff); }

std::int64_t expected_sum(std::uint64_t n) {
  std::int64_t s = 0;
  for (std::uint64_t i = 0; i < n; ++i) s += std::int64_t{input(i)} * input(i);
  return s;
}

void expect(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("wrong result: ") + what);
}

void rethrow(const std::exception_ptr& e) {
  if (e) std::rethrow_exception(e);
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(static_cast<double>(v.size()) * p);
  return v[std::min(i, v.size() - 1)];
}

// Which sides run (--side), for profiling one of them: coproc from coroutines (`await`), coproc
// with blocking waits (`get`), C.
bool do_await = true, do_get = true, do_c = true;

// --- CPU placement -----------------------------------------------------------------------

cpu_set_t initial_affinity;

void pin_here() {
  const int cpu = sched_getcpu();
  if (cpu < 0) bench::die("sched_getcpu");
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) bench::die("sched_setaffinity");
}

void unpin() {
  if (sched_setaffinity(0, sizeof initial_affinity, &initial_affinity) != 0)
    bench::die("sched_setaffinity");
}

// --- coproc ------------------------------------------------------------------------------

// Runs `aw` on `ctx` until it finishes (the pool's own pending work stays pending).
void run_on(asio::io_context& ctx, asio::awaitable<void> aw) {
  bool done = false;
  std::exception_ptr error;
  asio::co_spawn(ctx, std::move(aw), [&](std::exception_ptr e) {
    error = e;
    done = true;
  });
  bench::run_until(ctx, [&] { return done; });
  rethrow(error);
}

// Every worker forked and past its first tasks (and the pool's task-time estimate settled).
asio::awaitable<void> warm_async(cp::process_pool& pool) {
  for (int i = 0; i < 64; ++i) {
    const int r = co_await pool.submit(square, i);
    expect(r == i * i, "warm-up");
  }
}

void warm_blocking(cp::process_pool& pool) {
  for (int i = 0; i < 64; ++i) expect(pool.submit(square, i).get() == i * i, "warm-up");
}

// Shuts a pool that lives on `ctx` down and waits until its workers are reaped.
void close_pool(asio::io_context& ctx, cp::process_pool& pool) {
  bool done = false;
  pool.async_shutdown(false, [&] { done = true; });
  bench::run_until(ctx, [&] { return done; });
}

double coproc_throughput(std::size_t workers, std::uint64_t tasks, int in_flight) {
  asio::io_context ctx;
  cp::process_pool pool(ctx.get_executor(), {.workers = workers});
  run_on(ctx, warm_async(pool));
  std::uint64_t next = 0;
  std::int64_t sum = 0;
  int active = in_flight;
  std::exception_ptr error;
  auto lane = [&]() -> asio::awaitable<void> {
    while (next < tasks) {
      const int x = input(next++);
      const int r = co_await pool.submit(square, x);
      sum += r;
    }
  };
  const auto t0 = bench::clock::now();
  for (int l = 0; l < in_flight; ++l)
    asio::co_spawn(ctx, lane(), [&](std::exception_ptr e) {
      if (e && !error) error = e;
      --active;
    });
  bench::run_until(ctx, [&] { return active == 0; });
  const double s = bench::seconds_since(t0);
  rethrow(error);
  expect(sum == expected_sum(tasks), "coproc throughput");
  close_pool(ctx, pool);
  return static_cast<double>(tasks) / s;
}

// The same with completion callbacks instead of coroutines: each callback submits the next task.
double coproc_throughput_callbacks(std::size_t workers, std::uint64_t tasks, int in_flight) {
  asio::io_context ctx;
  cp::process_pool pool(ctx.get_executor(), {.workers = workers});
  run_on(ctx, warm_async(pool));
  std::uint64_t next = 0, done = 0;
  std::int64_t sum = 0;
  std::exception_ptr error;
  std::function<void()> submit_one = [&] {
    const int x = input(next++);
    pool.submit(square, x).add_done_callback([&](const cp::future<int>& f) {
      try {
        sum += f.get();
      } catch (...) {
        if (!error) error = std::current_exception();
      }
      ++done;
      if (next < tasks) submit_one();
    });
  };
  const auto t0 = bench::clock::now();
  for (int l = 0; l < in_flight && next < tasks; ++l) submit_one();
  bench::run_until(ctx, [&] { return done == tasks; });
  const double s = bench::seconds_since(t0);
  rethrow(error);
  expect(sum == expected_sum(tasks), "coproc callback throughput");
  close_pool(ctx, pool);
  return static_cast<double>(tasks) / s;
}

// --- C -----------------------------------------------------------------------------------

struct request {
  std::uint32_t seq;
  std::int32_t x;
};
struct response {
  std::uint32_t seq;
  std::int32_t r;
};

void write_all(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) bench::die("write");
    c += w;
    n -= static_cast<std::size_t>(w);
  }
}

// Reads exactly n bytes; false at end of stream before the first byte.
bool read_all(int fd, void* p, std::size_t n) {
  char* c = static_cast<char*>(p);
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd, c + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0 && got == 0) return false;
    if (r <= 0) bench::die("read");
    got += static_cast<std::size_t>(r);
  }
  return true;
}

// A forked worker on a socketpair. The child keeps only its end (on descriptor 3): a coproc
// pool started later must not hold it, nor may it hold theirs. The parent ends it with
// shutdown(), which reaches the child however many processes share the descriptor.
struct c_worker {
  int fd = -1;
  pid_t pid = -1;
  template <typename Body>
  explicit c_worker(Body body) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) bench::die("socketpair");
    std::fflush(stdout);
    std::fflush(stderr);
    pid = fork();
    if (pid < 0) bench::die("fork");
    if (pid == 0) {
      if (dup2(sv[1], 3) < 0) _exit(2);
      syscall(SYS_close_range, 4u, ~0u, 0u);
      body(3);
      _exit(0);
    }
    ::close(sv[1]);
    fd = sv[0];
  }
  ~c_worker() {
    ::shutdown(fd, SHUT_RDWR);
    ::close(fd);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      std::fprintf(stderr, "pool_bench: a C worker failed (status %d)\n", st);
      std::exit(1);
    }
  }
  c_worker(const c_worker&) = delete;
  c_worker& operator=(const c_worker&) = delete;
};

// The C worker of the throughput and latency figures: reads whatever requests are there,
// answers them all with one write.
void c_task_worker(int fd) {
  constexpr std::size_t cap = 256;
  request in[cap];
  response out[cap];
  std::size_t have = 0;  // bytes
  for (;;) {
    const ssize_t r = ::read(fd, reinterpret_cast<char*>(in) + have, sizeof in - have);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return;
    have += static_cast<std::size_t>(r);
    const std::size_t k = have / sizeof(request);
    for (std::size_t i = 0; i < k; ++i) out[i] = {in[i].seq, square(in[i].x)};
    write_all(fd, out, k * sizeof(response));
    const std::size_t rest = have - k * sizeof(request);
    std::memmove(in, reinterpret_cast<char*>(in) + k * sizeof(request), rest);
    have = rest;
  }
}

double c_throughput(std::size_t n_workers, std::uint64_t tasks, int in_flight) {
  std::vector<std::unique_ptr<c_worker>> ws;
  for (std::size_t i = 0; i < n_workers; ++i)
    ws.push_back(std::make_unique<c_worker>(c_task_worker));
  for (auto& w : ws) {  // one round trip each: forked and running
    request q{0, 3};
    response a{};
    write_all(w->fd, &q, sizeof q);
    if (!read_all(w->fd, &a, sizeof a) || a.r != 9) throw std::runtime_error("C worker");
  }
  const std::size_t per_worker = static_cast<std::size_t>(in_flight) / n_workers;
  std::vector<pollfd> pfds(n_workers);
  std::vector<std::size_t> pending(n_workers, 0);  // bytes of a partial response
  std::vector<std::vector<char>> inbuf(n_workers, std::vector<char>(per_worker * sizeof(response)));
  std::vector<request> batch(per_worker);
  std::uint64_t next = 0, done = 0;
  std::int64_t sum = 0;
  const auto t0 = bench::clock::now();
  for (std::size_t w = 0; w < n_workers; ++w) {
    std::size_t k = 0;
    while (k < per_worker && next < tasks) {
      batch[k++] = {static_cast<std::uint32_t>(next), input(next)};
      ++next;
    }
    write_all(ws[w]->fd, batch.data(), k * sizeof(request));
    pfds[w] = {ws[w]->fd, POLLIN, 0};
  }
  while (done < tasks) {
    if (::poll(pfds.data(), pfds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      bench::die("poll");
    }
    for (std::size_t w = 0; w < n_workers; ++w) {
      if (!(pfds[w].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char* buf = inbuf[w].data();
      const ssize_t r = ::read(pfds[w].fd, buf + pending[w], inbuf[w].size() - pending[w]);
      if (r <= 0) bench::die("read");
      const std::size_t have = pending[w] + static_cast<std::size_t>(r);
      const std::size_t k = have / sizeof(response);
      std::size_t m = 0;
      for (std::size_t i = 0; i < k; ++i) {
        response a;
        std::memcpy(&a, buf + i * sizeof a, sizeof a);
        sum += a.r;
        if (next < tasks) {
          batch[m++] = {static_cast<std::uint32_t>(next), input(next)};
          ++next;
        }
      }
      done += k;
      pending[w] = have - k * sizeof(response);
      std::memmove(buf, buf + k * sizeof(response), pending[w]);
      if (m) write_all(pfds[w].fd, batch.data(), m * sizeof(request));
    }
  }
  const double s = bench::seconds_since(t0);
  expect(sum == expected_sum(tasks), "C throughput");
  return static_cast<double>(tasks) / s;
}

// --- latency -----------------------------------------------------------------------------

struct latency_samples {
  std::vector<double> await_us, get_us, c_us;
};

latency_samples latency_run(std::size_t workers, std::uint64_t n, std::uint64_t warmup, int run) {
  constexpr std::uint64_t chunk = 1000;
  asio::io_context ctx;
  cp::process_pool on_ctx(ctx.get_executor(), {.workers = workers});
  cp::process_pool own({.workers = workers});
  c_worker cw(c_task_worker);
  run_on(ctx, warm_async(on_ctx));
  warm_blocking(own);

  latency_samples out;
  out.await_us.reserve(n);
  out.get_us.reserve(n);
  out.c_us.reserve(n);
  std::uint64_t i_await = 0, i_get = 0, i_c = 0;
  auto side_await = [&](std::uint64_t k, bool record) {
    if (!do_await) return;
    run_on(ctx, [&]() -> asio::awaitable<void> {
      for (std::uint64_t j = 0; j < k; ++j) {
        const int x = input(i_await++);
        const auto t0 = bench::clock::now();
        const int r = co_await on_ctx.submit(square, x);
        const auto t1 = bench::clock::now();
        expect(r == x * x, "coproc await latency");
        if (record)
          out.await_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      }
    }());
  };
  auto side_get = [&](std::uint64_t k, bool record) {
    if (!do_get) return;
    for (std::uint64_t j = 0; j < k; ++j) {
      const int x = input(i_get++);
      const auto t0 = bench::clock::now();
      const int r = own.submit(square, x).get();
      const auto t1 = bench::clock::now();
      expect(r == x * x, "coproc get latency");
      if (record) out.get_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
  };
  auto side_c = [&](std::uint64_t k, bool record) {
    if (!do_c) return;
    for (std::uint64_t j = 0; j < k; ++j) {
      const int x = input(i_c);
      const request q{static_cast<std::uint32_t>(i_c++), x};
      response a{};
      const auto t0 = bench::clock::now();
      write_all(cw.fd, &q, sizeof q);
      if (!read_all(cw.fd, &a, sizeof a)) throw std::runtime_error("C worker gone");
      const auto t1 = bench::clock::now();
      expect(a.r == x * x && a.seq == q.seq, "C latency");
      if (record) out.c_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
  };
  side_await(warmup, false);
  side_get(warmup, false);
  side_c(warmup, false);
  std::uint64_t left = n;
  for (std::uint64_t round = 0; left > 0; ++round) {
    const std::uint64_t k = std::min(chunk, left);
    left -= k;
    for (std::uint64_t s = 0; s < 3; ++s) {
      switch ((s + round + static_cast<std::uint64_t>(run)) % 3) {
        case 0: side_await(k, true); break;
        case 1: side_get(k, true); break;
        default: side_c(k, true); break;
      }
    }
  }
  close_pool(ctx, on_ctx);
  return out;
}

// --- map ---------------------------------------------------------------------------------

double coproc_map_async(std::size_t workers, const std::vector<int>& inputs,
                        std::size_t chunksize) {
  asio::io_context ctx;
  cp::process_pool pool(ctx.get_executor(), {.workers = workers});
  run_on(ctx, warm_async(pool));
  std::int64_t sum = 0;
  std::size_t count = 0;
  const auto t0 = bench::clock::now();
  run_on(ctx, [&]() -> asio::awaitable<void> {
    auto results = pool.map(square, inputs, {.chunksize = chunksize});
    for (;;) {
      const std::optional<int> r = co_await results.async_next();
      if (!r) break;
      sum += *r;
      ++count;
    }
  }());
  const double s = bench::seconds_since(t0);
  expect(count == inputs.size() && sum == expected_sum(inputs.size()), "coproc map");
  close_pool(ctx, pool);
  return static_cast<double>(inputs.size()) / s;
}

// The same drained one ready batch per wakeup (`async_next_batch`).
double coproc_map_batch(std::size_t workers, const std::vector<int>& inputs,
                        std::size_t chunksize) {
  asio::io_context ctx;
  cp::process_pool pool(ctx.get_executor(), {.workers = workers});
  run_on(ctx, warm_async(pool));
  std::int64_t sum = 0;
  std::size_t count = 0;
  const auto t0 = bench::clock::now();
  run_on(ctx, [&]() -> asio::awaitable<void> {
    auto results = pool.map(square, inputs, {.chunksize = chunksize});
    for (;;) {
      const std::vector<int> batch = co_await results.async_next_batch();
      if (batch.empty()) break;
      for (int r : batch) sum += r;
      count += batch.size();
    }
  }());
  const double s = bench::seconds_since(t0);
  expect(count == inputs.size() && sum == expected_sum(inputs.size()), "coproc map batch");
  close_pool(ctx, pool);
  return static_cast<double>(inputs.size()) / s;
}

double coproc_map_blocking(std::size_t workers, const std::vector<int>& inputs,
                           std::size_t chunksize) {
  cp::process_pool pool({.workers = workers});
  warm_blocking(pool);
  std::int64_t sum = 0;
  std::size_t count = 0;
  const auto t0 = bench::clock::now();
  auto results = pool.map(square, inputs, {.chunksize = chunksize});
  for (const int r : results) {
    sum += r;
    ++count;
  }
  const double s = bench::seconds_since(t0);
  expect(count == inputs.size() && sum == expected_sum(inputs.size()), "coproc blocking map");
  return static_cast<double>(inputs.size()) / s;
}

// The C worker of the map figure: a chunk is a u64 count + that many ints; the answer is the
// same count of squares.
void c_map_worker(int fd) {
  std::vector<int> in, out;
  for (;;) {
    std::uint64_t n = 0;
    if (!read_all(fd, &n, sizeof n)) return;
    in.resize(n);
    out.resize(n);
    if (n && !read_all(fd, in.data(), n * sizeof(int))) return;
    for (std::size_t i = 0; i < n; ++i) out[i] = square(in[i]);
    write_all(fd, out.data(), n * sizeof(int));
  }
}

double c_map(std::size_t n_workers, const std::vector<int>& inputs, std::size_t chunksize) {
  std::vector<std::unique_ptr<c_worker>> ws;
  for (std::size_t i = 0; i < n_workers; ++i)
    ws.push_back(std::make_unique<c_worker>(c_map_worker));
  for (auto& w : ws) {  // one chunk of one each: forked and running
    const std::uint64_t one = 1;
    const int x = 3;
    int r = 0;
    write_all(w->fd, &one, sizeof one);
    write_all(w->fd, &x, sizeof x);
    if (!read_all(w->fd, &r, sizeof r) || r != 9) throw std::runtime_error("C map worker");
  }
  constexpr std::size_t depth = 2;  // chunks in flight per worker
  const std::size_t total = inputs.size();
  std::vector<int> results(total);
  // Per worker, the chunks sent and not yet fully read, as [begin, end) offsets, oldest first.
  std::vector<std::vector<std::pair<std::size_t, std::size_t>>> sent(n_workers);
  std::vector<std::size_t> got(n_workers, 0);  // bytes of the oldest chunk read so far
  std::size_t next = 0, done = 0;
  auto send_chunk = [&](std::size_t w) {
    const std::size_t end = std::min(total, next + chunksize);
    const std::uint64_t n = end - next;
    write_all(ws[w]->fd, &n, sizeof n);
    write_all(ws[w]->fd, inputs.data() + next, n * sizeof(int));
    sent[w].emplace_back(next, end);
    next = end;
  };
  std::vector<pollfd> pfds(n_workers);
  const auto t0 = bench::clock::now();
  for (std::size_t d = 0; d < depth; ++d)
    for (std::size_t w = 0; w < n_workers && next < total; ++w) send_chunk(w);
  for (std::size_t w = 0; w < n_workers; ++w) pfds[w] = {ws[w]->fd, POLLIN, 0};
  while (done < total) {
    if (::poll(pfds.data(), pfds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      bench::die("poll");
    }
    for (std::size_t w = 0; w < n_workers; ++w) {
      if (!(pfds[w].revents & (POLLIN | POLLHUP | POLLERR)) || sent[w].empty()) continue;
      const auto [b, e] = sent[w].front();
      char* dst = reinterpret_cast<char*>(results.data() + b);
      const std::size_t want = (e - b) * sizeof(int);
      const ssize_t r = ::read(pfds[w].fd, dst + got[w], want - got[w]);
      if (r <= 0) bench::die("read");
      got[w] += static_cast<std::size_t>(r);
      if (got[w] == want) {
        got[w] = 0;
        done += e - b;
        sent[w].erase(sent[w].begin());
        if (next < total) send_chunk(w);
      }
    }
  }
  const double s = bench::seconds_since(t0);
  std::int64_t sum = 0;
  for (int r : results) sum += r;
  expect(sum == expected_sum(total), "C map");
  return static_cast<double>(total) / s;
}

// --- CPU-bound ---------------------------------------------------------------------------

// Iterations of spin() that take about `ms` milliseconds here (the fastest of a few tries).
std::uint64_t calibrate(int ms) {
  constexpr std::uint64_t probe = 1 << 22;
  double best = 1e9;
  std::uint64_t sink = 0;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = bench::clock::now();
    sink += spin(probe + static_cast<std::uint64_t>(i));
    best = std::min(best, bench::seconds_since(t0));
  }
  if (sink == 42) std::fprintf(stderr, "#\n");  // keeps the calls
  return static_cast<std::uint64_t>(static_cast<double>(probe) * (ms / 1e3) / best);
}

double coproc_cpu_seconds(std::size_t workers, int tasks, std::uint64_t iterations) {
  cp::process_pool pool({.workers = workers});
  warm_blocking(pool);
  std::vector<cp::future<std::uint64_t>> fs;
  fs.reserve(static_cast<std::size_t>(tasks));
  const auto t0 = bench::clock::now();
  for (int i = 0; i < tasks; ++i)
    fs.push_back(pool.submit(spin, iterations + static_cast<std::uint64_t>(i)));
  std::vector<std::uint64_t> results;
  for (auto& f : fs) results.push_back(f.get());
  const double s = bench::seconds_since(t0);
  expect(results.back() == spin(iterations + static_cast<std::uint64_t>(tasks - 1)), "cpu");
  return s;
}

// The same work split over `procs` forked processes, each running its share in a loop: the
// parallelism this machine gives right now, whatever the pool does.
double c_cpu_seconds(std::size_t procs, int tasks, std::uint64_t iterations) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::vector<pid_t> pids;
  const auto t0 = bench::clock::now();
  for (std::size_t p = 0; p < procs; ++p) {
    const pid_t pid = fork();
    if (pid < 0) bench::die("fork");
    if (pid == 0) {
      std::uint64_t sink = 0;
      for (int i = static_cast<int>(p); i < tasks; i += static_cast<int>(procs))
        sink += spin(iterations + static_cast<std::uint64_t>(i));
      _exit(sink == 42 ? 3 : 0);
    }
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) throw std::runtime_error("C cpu child failed");
  }
  return bench::seconds_since(t0);
}

// --- Python peer -------------------------------------------------------------------------

// Runs pool_peer.py and returns its figures by name; empty (after a note) without python3.
std::map<std::string, double> python_figures(const std::vector<std::string>& args, bool& missing) {
  return bench::python_peer_figures(COPROC_BENCH_POOL_PEER, args, missing);
}

void take(const std::map<std::string, double>& py, const char* name, std::vector<double>& into) {
  if (auto it = py.find(name); it != py.end()) into.push_back(it->second);
}

double last(const std::vector<double>& v) { return v.empty() ? std::nan("") : v.back(); }

}  // namespace

int main(int argc, char** argv) try {
  cp::worker_hook(argc, argv);
  bench::options opt(argc, argv);
  const int runs = static_cast<int>(opt.get("runs", 5));
  const auto workers = static_cast<std::size_t>(opt.get("workers", 2));
  const auto tasks = static_cast<std::uint64_t>(opt.get("tasks", 100000));
  const int in_flight = static_cast<int>(opt.get("in-flight", 64));
  const auto n_latency = static_cast<std::uint64_t>(opt.get("latency", 20000));
  const auto warmup = static_cast<std::uint64_t>(opt.get("warmup", 1000));
  const auto n_map = static_cast<std::size_t>(opt.get("map", 1000000));
  const auto chunksize = static_cast<std::size_t>(opt.get("chunksize", 10000));
  const int cpu_tasks = static_cast<int>(opt.get("cpu-tasks", 40));
  const int cpu_ms = static_cast<int>(opt.get("cpu-ms", 20));
  bool python_missing = opt.get("python", 1) == 0;
  const bool python = !python_missing;
  const auto py_tasks = opt.get("python-tasks", 20000);
  const auto py_latency = opt.get("python-latency", 2000);
  const std::string only = opt.get_string("only", "all");
  const std::string pin = opt.get_string("pin", "same");
  const std::string sides = opt.get_string("side", "all");
  const bool verbose = opt.get("verbose", 0) != 0;
  opt.check();
  if (sides != "all" && sides != "coproc" && sides != "await" && sides != "get" && sides != "c")
    throw std::runtime_error("--side must be all, coproc, await, get or c");
  do_await = sides == "all" || sides == "coproc" || sides == "await";
  do_get = sides == "all" || sides == "coproc" || sides == "get";
  do_c = sides == "all" || sides == "c";
  if (only != "all" && only != "throughput" && only != "latency" && only != "map" && only != "cpu")
    throw std::runtime_error("--only must be all, throughput, latency, map or cpu");
  if (pin != "same" && pin != "none") throw std::runtime_error("--pin must be same or none");
  if (workers == 0 || tasks == 0 || in_flight < static_cast<int>(workers) || n_latency == 0 ||
      n_map == 0 || chunksize == 0 || cpu_tasks <= 0 || cpu_ms <= 0)
    throw std::runtime_error("counts must be > 0 (and --in-flight >= --workers)");
  if (sched_getaffinity(0, sizeof initial_affinity, &initial_affinity) != 0)
    bench::die("sched_getaffinity");
  const bool do_tp = only == "all" || only == "throughput";
  const bool do_lat = only == "all" || only == "latency";
  const bool do_map = only == "all" || only == "map";
  const bool do_cpu = only == "all" || only == "cpu";
  const std::string w = std::to_string(workers);

  std::vector<double> tp_co, tp_cb, tp_c, tp_py_ex, tp_py_pool;
  std::vector<double> await50, await99, get50, get99, c50, c99, py50, py99;
  std::vector<double> map_co, map_co_batch, map_co_blk, map_c, map_py;
  std::vector<double> cpu_1, cpu_n, c_cpu_1, c_cpu_n;
  const std::size_t cores = cp::available_cpus();
  const std::uint64_t iterations = do_cpu ? calibrate(cpu_ms) : 0;
  std::vector<int> inputs;
  if (do_map)
    for (std::size_t i = 0; i < n_map; ++i) inputs.push_back(input(i));

  for (int run = 0; run < runs; ++run) {
    const bool coproc_first = run % 2 == 0;
    if (do_tp) {
      auto coproc_side = [&] {
        if (do_await) tp_co.push_back(coproc_throughput(workers, tasks, in_flight));
        if (do_await) tp_cb.push_back(coproc_throughput_callbacks(workers, tasks, in_flight));
      };
      if (coproc_first) coproc_side();
      if (do_c) tp_c.push_back(c_throughput(workers, tasks, in_flight));
      if (!coproc_first) coproc_side();
      const auto py =
          python_figures({"throughput", "--workers", w, "--tasks", std::to_string(py_tasks),
                          "--in-flight", std::to_string(in_flight)},
                         python_missing);
      take(py, "pool_throughput_python_executor", tp_py_ex);
      take(py, "pool_throughput_python_pool", tp_py_pool);
    }
    if (do_lat) {
      if (pin == "same") pin_here();
      auto s = latency_run(workers, n_latency, warmup, run);
      await50.push_back(percentile(s.await_us, 0.5));
      await99.push_back(percentile(s.await_us, 0.99));
      get50.push_back(percentile(s.get_us, 0.5));
      get99.push_back(percentile(s.get_us, 0.99));
      c50.push_back(percentile(s.c_us, 0.5));
      c99.push_back(percentile(s.c_us, 0.99));
      const auto py = python_figures(
          {"latency", "--workers", w, "--latency", std::to_string(py_latency)}, python_missing);
      take(py, "pool_latency_python_executor_p50", py50);
      take(py, "pool_latency_python_executor_p99", py99);
      unpin();
    }
    if (do_map) {
      auto coproc_maps = [&] {
        if (do_await) map_co.push_back(coproc_map_async(workers, inputs, chunksize));
        if (do_await) map_co_batch.push_back(coproc_map_batch(workers, inputs, chunksize));
        if (do_get) map_co_blk.push_back(coproc_map_blocking(workers, inputs, chunksize));
      };
      if (coproc_first) coproc_maps();
      if (do_c) map_c.push_back(c_map(workers, inputs, chunksize));
      if (!coproc_first) coproc_maps();
      const auto py = python_figures({"map", "--workers", w, "--map", std::to_string(n_map),
                                      "--chunksize", std::to_string(chunksize)},
                                     python_missing);
      take(py, "pool_map_python_pool", map_py);
    }
    if (do_cpu) {
      if (do_get) {
        if (coproc_first) cpu_n.push_back(coproc_cpu_seconds(cores, cpu_tasks, iterations));
        cpu_1.push_back(coproc_cpu_seconds(1, cpu_tasks, iterations));
        if (!coproc_first) cpu_n.push_back(coproc_cpu_seconds(cores, cpu_tasks, iterations));
      }
      if (do_c) {
        c_cpu_1.push_back(c_cpu_seconds(1, cpu_tasks, iterations));
        c_cpu_n.push_back(c_cpu_seconds(cores, cpu_tasks, iterations));
      }
    }
    if (verbose)
      std::fprintf(stderr,
                   "# run %d: throughput %.0f C %.0f executor %.0f Pool %.0f tasks/s | p50 "
                   "await %.2f get %.2f C %.2f executor %.2f us | map %.0f blocking %.0f C "
                   "%.0f Pool %.0f items/s | cpu 1 %.3f N %.3f C 1 %.3f N %.3f s\n",
                   run + 1, last(tp_co), last(tp_c), last(tp_py_ex), last(tp_py_pool),
                   last(await50), last(get50), last(c50), last(py50), last(map_co),
                   last(map_co_blk), last(map_c), last(map_py), last(cpu_1), last(cpu_n),
                   last(c_cpu_1), last(c_cpu_n));
  }

  using bench::figure;
  using bench::median;
  const bool have_py = python && !python_missing;
  figure("pool_workers", static_cast<double>(workers), "workers", 0);
  if (do_tp) {
    const double co = median(tp_co), c = median(tp_c);
    figure("pool_throughput_tasks", static_cast<double>(tasks), "tasks", 0);
    figure("pool_throughput_in_flight", in_flight, "tasks", 0);
    figure("pool_throughput_coproc", co, "tasks/s", 0);
    figure("pool_throughput_coproc_callbacks", median(tp_cb), "tasks/s", 0);
    figure("pool_throughput_c_socketpair", c, "tasks/s", 0);
    figure("pool_throughput_ratio_vs_c", co / c, "x", 2);
    figure("pool_throughput_callbacks_ratio_vs_c", median(tp_cb) / c, "x", 2);
    if (have_py) {
      const double ex = median(tp_py_ex), pl = median(tp_py_pool);
      figure("pool_throughput_python_executor", ex, "tasks/s", 0);
      figure("pool_throughput_python_pool", pl, "tasks/s", 0);
      figure("pool_throughput_ratio_vs_python_executor", co / ex, "x", 2);
      figure("pool_throughput_ratio_vs_python_pool", co / pl, "x", 2);
    }
  }
  if (do_lat) {
    figure("pool_latency_round_trips", static_cast<double>(n_latency), "round trips", 0);
    figure("pool_latency_coproc_await_p50", median(await50), "us", 2);
    figure("pool_latency_coproc_await_p99", median(await99), "us", 2);
    figure("pool_latency_coproc_get_p50", median(get50), "us", 2);
    figure("pool_latency_coproc_get_p99", median(get99), "us", 2);
    figure("pool_latency_c_p50", median(c50), "us", 2);
    figure("pool_latency_c_p99", median(c99), "us", 2);
    figure("pool_latency_await_p50_ratio_vs_c", median(await50) / median(c50), "x", 2);
    figure("pool_latency_await_p99_ratio_vs_c", median(await99) / median(c99), "x", 2);
    figure("pool_latency_get_p50_ratio_vs_c", median(get50) / median(c50), "x", 2);
    figure("pool_latency_get_p99_ratio_vs_c", median(get99) / median(c99), "x", 2);
    if (have_py) {
      figure("pool_latency_python_executor_p50", median(py50), "us", 2);
      figure("pool_latency_python_executor_p99", median(py99), "us", 2);
      figure("pool_latency_await_p50_ratio_vs_python_executor", median(await50) / median(py50), "x",
             2);
    }
  }
  if (do_map) {
    const double co = median(map_co), blk = median(map_co_blk), c = median(map_c);
    figure("pool_map_items", static_cast<double>(n_map), "items", 0);
    figure("pool_map_chunksize", static_cast<double>(chunksize), "items", 0);
    const double bat = median(map_co_batch);
    figure("pool_map_coproc_async_next", co, "items/s", 0);
    figure("pool_map_coproc_async_next_batch", bat, "items/s", 0);
    figure("pool_map_coproc_blocking", blk, "items/s", 0);
    figure("pool_map_c_socketpair", c, "items/s", 0);
    figure("pool_map_ratio_vs_c", co / c, "x", 2);
    figure("pool_map_blocking_ratio_vs_c", blk / c, "x", 2);
    if (have_py) {
      const double pl = median(map_py);
      figure("pool_map_python_pool", pl, "items/s", 0);
      figure("pool_map_ratio_vs_python_pool", co / pl, "x", 2);
      figure("pool_map_batch_ratio_vs_python_pool", bat / pl, "x", 2);
      figure("pool_map_blocking_ratio_vs_python_pool", blk / pl, "x", 2);
    }
  }
  if (do_cpu) {
    const double t1 = median(cpu_1), tn = median(cpu_n);
    const double c1 = median(c_cpu_1), cn = median(c_cpu_n);
    figure("pool_cpu_cores", static_cast<double>(cores), "cores", 0);
    figure("pool_cpu_tasks", cpu_tasks, "tasks", 0);
    // What one task took in this run (the C process's time per task), not the calibration target.
    figure("pool_cpu_task_ms", c1 / cpu_tasks * 1e3, "ms", 1);
    figure("pool_cpu_coproc_1_worker", t1, "s", 3);
    figure("pool_cpu_coproc_all_workers", tn, "s", 3);
    figure("pool_cpu_speedup", t1 / tn, "x", 2);
    figure("pool_cpu_efficiency", t1 / tn / static_cast<double>(cores), "x", 2);
    figure("pool_cpu_c_fork_1_process", c1, "s", 3);
    figure("pool_cpu_c_fork_all_processes", cn, "s", 3);
    figure("pool_cpu_c_speedup", c1 / cn, "x", 2);
    figure("pool_cpu_speedup_ratio_vs_c", (t1 / tn) / (c1 / cn), "x", 2);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "pool_bench: %s\n", e.what());
  return 1;
}
