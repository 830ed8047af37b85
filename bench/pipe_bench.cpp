// Framed messages between processes: coproc::make_pipe connections vs the same frames on a raw
// C socketpair vs Python's multiprocessing.Pipe (bench/pipe_peer.py).
//
// The other side (sender or echoer) is always a forked child; this process is the measured
// side. Every message carries its sequence number in its first 8 bytes, which the receiver
// checks. Frames are an 8-byte header + payload on both the coproc and the C side (coproc:
// {u32 size, u32 tag}; C: a u64 length), on socketpairs with the default buffer sizes.
//
//   pipe_64B_*     SMALL (1,000,000) 64-byte messages, one send system call each (coproc
//                  `send(std::array<char, 64>)`; C one write() of the frame), received by
//                  coproc `receive<std::array<char, 64>>()` (blocking) and by `co_await
//                  async_receive<...>()` (a coroutine on an io_context) vs C: read() into a
//                  64 KiB buffer + a frame parser. msgs/s.
//   pipe_1MiB_*    BIG (8000) 1 MiB messages: coproc `send_bytes` into
//                  `receive_bytes(std::string&)` (one string, reused) vs C writev(header,
//                  payload) into a read() loop for the header and one for the payload, into
//                  a reused 1 MiB buffer. MB/s (10^6 B/s).
//   pingpong_64B_* PINGPONG (200,000) round trips of a 64-byte message, each timed: coproc
//                  blocking send + receive; coproc `co_await async_send` + `co_await
//                  async_receive` (the echoing child is the same blocking coproc loop); C
//                  write() + read() both ways. p50 and p99, us.
//
// Interleaving: this machine's wake-up latency switches between modes (on a 2-vCPU VM, 4 us
// and 70 us round trips) for seconds at a time, which a side measured as one block would meet
// by chance. So in each run every sender/echoer child is started first and kept alive, and
// the work is cut into chunks (100,000 small messages, 500 large ones, 10,000 round trips)
// that go round the sides in rotating order. A throughput chunk is timed from the request
// (a message telling the child how many to send) to its last message; a side's figure is all
// its messages over the sum of its chunks' times. Ping-pong runs 1000 untimed round trips
// per side first. One child per side: the blocking and the async coproc figures use
// connections of their own (a connection that has waited asynchronously stays in the event
// loop's epoll set, which costs every later message a kernel callback).
//
// CPU placement (--pin): on this 2-vCPU VM a wake-up across vCPUs costs ~20 us (an idle vCPU
// halts), so a round trip is ~4 us when both processes share a vCPU and ~45 us when they do
// not, and the scheduler's choice differs from child to child. `same` (the default) pins this
// process and its children to the vCPU it started on, which makes the figures repeatable and
// measures the software path; `split` puts the children on another vCPU; `none` leaves it to
// the scheduler.
//
// Python peers: bench/pipe_peer.py (multiprocessing.Pipe, send_bytes/recv_bytes), once per
// run after the C++ sides; without python3 they are skipped with a note.
// Options: --runs N (5), --small N, --big N, --pingpong N, --python-small N (500,000),
// --python-big N (1000), --python-pingpong N (100,000), --python 0|1 (1),
// --only all|small|big|pingpong (all), --side all|coproc|c (all; for profiling one side,
// e.g. under strace or perf, with --python 0), --async 0|1 (1: also the coproc async
// figures), --verbose 0|1 (0; 1: every run's values on stderr), --pin same|split|none (same).
#include <coproc/pipe.hpp>

#include "bench_common.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <array>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <sched.h>
#include <sys/socket.h>
#include <sys/uio.h>

namespace asio = boost::asio;
namespace cp = coproc;

#ifndef COPROC_BENCH_PIPE_PEER
#error "COPROC_BENCH_PIPE_PEER must name bench/pipe_peer.py"
#endif

namespace {

constexpr std::size_t small = 64;
constexpr std::size_t big = std::size_t{1} << 20;
constexpr std::size_t c_buffer = 64 * 1024;  // the C small-message receiver's buffer
constexpr std::size_t header = 8;
constexpr std::uint64_t small_chunk = 100000, big_chunk = 500, ping_chunk = 10000;
constexpr std::uint64_t warmup = 1000;
using message = std::array<char, small>;

void expect(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("wrong result: ") + what);
}

void rethrow(const std::exception_ptr& e) {
  if (e) std::rethrow_exception(e);
}

std::uint64_t seq_of(const char* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
void set_seq(char* p, std::uint64_t v) { std::memcpy(p, &v, sizeof v); }

// `total` cut into chunks of about `chunk`.
std::vector<std::uint64_t> split(std::uint64_t total, std::uint64_t chunk) {
  const std::uint64_t n = std::max<std::uint64_t>(1, (total + chunk - 1) / chunk);
  std::vector<std::uint64_t> v(n, total / n);
  v[0] += total % n;
  return v;
}

// --- processes ---------------------------------------------------------------------------

// CPU placement (--pin): -1 leaves it to the scheduler; otherwise the CPU of this process
// and the one of its children.
int parent_cpu = -1, child_cpu = -1;

void pin_to(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) bench::die("sched_setaffinity");
}

// Forks a child that runs `body` and exits (0, or 1 when `body` throws) without running
// this process's destructors.
pid_t fork_child(const std::function<void()>& body) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) bench::die("fork");
  if (pid == 0) {
    pin_to(child_cpu);
    int rc = 1;
    try {
      body();
      rc = 0;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pipe_bench child: %s\n", e.what());
    }
    _exit(rc);
  }
  return pid;
}

// Waits for a child; a failed child ends the program (its error is on stderr).
void reap(pid_t pid) noexcept {
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    std::fprintf(stderr, "pipe_bench: a child failed (status %d)\n", st);
    std::exit(1);
  }
}

// A coproc pipe whose second end goes to a forked child running `body` on it (the child
// adopts the descriptor on an io_context of its own). Closing `conn` ends the child: the
// end-of-stream that `body` then meets is a normal exit.
struct coproc_peer {
  cp::connection conn;
  pid_t pid = -1;
  coproc_peer(asio::io_context& ctx, const std::function<void(cp::connection&)>& body) {
    auto [mine, theirs] = cp::make_pipe(ctx.get_executor());
    const int fd = theirs.release();
    const int my_fd = mine.native_handle();
    pid = fork_child([&] {
      ::close(my_fd);  // the parent's end (its connection object is never touched here)
      asio::io_context child_ctx;
      cp::connection c(child_ctx.get_executor(), fd);
      try {
        body(c);
      } catch (const boost::system::system_error& e) {
        if (e.code() != asio::error::eof) throw;
      }
    });
    ::close(fd);
    conn = std::move(mine);
  }
  ~coproc_peer() {
    conn.close();
    reap(pid);
  }
};

struct c_peer {
  int fd = -1;
  pid_t pid = -1;
  explicit c_peer(const std::function<void(int)>& body) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) bench::die("socketpair");
    pid = fork_child([&] {
      ::close(sv[0]);
      body(sv[1]);
    });
    ::close(sv[1]);
    fd = sv[0];
  }
  ~c_peer() {
    ::close(fd);
    reap(pid);
  }
};

// --- C helpers -----------------------------------------------------------------------------

void write_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      bench::die("write");
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

// False at end-of-stream before the first byte.
bool read_all(int fd, char* p, std::size_t n) {
  const std::size_t want = n;
  while (n > 0) {
    const ssize_t r = ::read(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      bench::die("read");
    }
    if (r == 0) {
      if (n == want) return false;
      throw std::runtime_error("C: end of stream inside a frame");
    }
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

void write_u64(int fd, std::uint64_t v) {
  char b[8];
  std::memcpy(b, &v, 8);
  write_all(fd, b, 8);
}

// 0 at end-of-stream.
std::uint64_t read_u64(int fd) {
  char b[8];
  if (!read_all(fd, b, 8)) return 0;
  std::uint64_t v;
  std::memcpy(&v, b, 8);
  return v;
}

// One frame of 64-byte payload: u64 length + payload.
struct c_small_frame {
  char bytes[header + small] = {};
  c_small_frame() {
    const std::uint64_t len = small;
    std::memcpy(bytes, &len, header);
  }
};

// --- senders and echoers (children) ----------------------------------------------------------

// Each request is a count (end-of-stream: exit); the sender sends that many messages,
// numbered on from the previous request.
void coproc_small_sender(cp::connection& c) {
  message m{};
  std::uint64_t seq = 0;
  while (const auto k = c.receive<std::uint64_t>()) {
    for (std::uint64_t i = 0; i < k; ++i) {
      set_seq(m.data(), seq++);
      c.send(m);
    }
  }
}

void coproc_big_sender(cp::connection& c) {
  std::string payload(big, 'x');
  std::uint64_t seq = 0;
  while (const auto k = c.receive<std::uint64_t>()) {
    for (std::uint64_t i = 0; i < k; ++i) {
      set_seq(payload.data(), seq++);
      c.send_bytes(payload);
    }
  }
}

void coproc_echoer(cp::connection& c) {
  for (;;) c.send(c.receive<message>());
}

void c_small_sender(int fd) {
  c_small_frame f;
  std::uint64_t seq = 0;
  while (const auto k = read_u64(fd)) {
    for (std::uint64_t i = 0; i < k; ++i) {
      set_seq(f.bytes + header, seq++);
      write_all(fd, f.bytes, sizeof f.bytes);
    }
  }
}

void c_big_sender(int fd) {
  std::vector<char> payload(big, 'x');
  char len[header];
  const std::uint64_t size = big;
  std::memcpy(len, &size, header);
  std::uint64_t seq = 0;
  while (const auto k = read_u64(fd)) {
    for (std::uint64_t i = 0; i < k; ++i) {
      set_seq(payload.data(), seq++);
      std::size_t done = 0;
      while (done < header + big) {  // one writev per frame (more only if it is cut short)
        iovec iov[2];
        int n = 0;
        if (done < header) iov[n++] = {len + done, header - done};
        const std::size_t pd = done > header ? done - header : 0;
        iov[n++] = {payload.data() + pd, big - pd};
        const ssize_t w = ::writev(fd, iov, n);
        if (w < 0) {
          if (errno == EINTR) continue;
          bench::die("writev");
        }
        done += static_cast<std::size_t>(w);
      }
    }
  }
}

void c_echoer(int fd) {
  c_small_frame f;
  while (read_all(fd, f.bytes, sizeof f.bytes)) write_all(fd, f.bytes, sizeof f.bytes);
}

// --- the measured side: one chunk each, returning its seconds ----------------------------------

double coproc_small_blocking(cp::connection& c, std::uint64_t k, std::uint64_t& seq) {
  const auto t0 = bench::clock::now();
  c.send(k);
  for (std::uint64_t i = 0; i < k; ++i) {
    const message m = c.receive<message>();
    if (seq_of(m.data()) != seq++) throw std::runtime_error("coproc: message out of sequence");
  }
  return bench::seconds_since(t0);
}

double coproc_small_async(asio::io_context& ctx, cp::connection& c, std::uint64_t k,
                          std::uint64_t& seq) {
  const auto t0 = bench::clock::now();
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        co_await c.async_send(k);
        for (std::uint64_t i = 0; i < k; ++i) {
          const message m = co_await c.async_receive<message>();
          if (seq_of(m.data()) != seq++)
            throw std::runtime_error("coproc: message out of sequence");
        }
      },
      rethrow);
  ctx.restart();
  ctx.run();
  return bench::seconds_since(t0);
}

double c_small(int fd, std::uint64_t k, std::uint64_t& seq, std::vector<char>& buf) {
  const auto t0 = bench::clock::now();
  write_u64(fd, k);
  const std::uint64_t stop = seq + k;
  std::size_t have = 0;
  while (seq < stop) {
    const ssize_t r = ::read(fd, buf.data() + have, buf.size() - have);
    if (r < 0) {
      if (errno == EINTR) continue;
      bench::die("read");
    }
    if (r == 0) throw std::runtime_error("C: unexpected end of stream");
    const char* p = buf.data();
    const char* end = p + have + static_cast<std::size_t>(r);
    while (static_cast<std::size_t>(end - p) >= header) {
      std::uint64_t len;
      std::memcpy(&len, p, header);
      if (len > buf.size() - header) throw std::runtime_error("C: frame too large");
      if (static_cast<std::size_t>(end - p) < header + len) break;
      if (len != small || seq_of(p + header) != seq) throw std::runtime_error("C: wrong frame");
      ++seq;
      p += header + len;
    }
    have = static_cast<std::size_t>(end - p);
    std::memmove(buf.data(), p, have);
  }
  expect(have == 0, "C: bytes after the last frame");
  return bench::seconds_since(t0);
}

double coproc_big(cp::connection& c, std::uint64_t k, std::uint64_t& seq, std::string& in) {
  const auto t0 = bench::clock::now();
  c.send(k);
  for (std::uint64_t i = 0; i < k; ++i) {
    c.receive_bytes(in);
    if (in.size() != big || seq_of(in.data()) != seq++ || in.back() != 'x')
      throw std::runtime_error("coproc: wrong 1 MiB message");
  }
  return bench::seconds_since(t0);
}

double c_big(int fd, std::uint64_t k, std::uint64_t& seq, std::vector<char>& buf) {
  const auto t0 = bench::clock::now();
  write_u64(fd, k);
  for (std::uint64_t i = 0; i < k; ++i) {
    const std::uint64_t len = read_u64(fd);
    if (len > buf.size()) throw std::runtime_error("C: frame too large");
    expect(read_all(fd, buf.data(), len), "C: end of stream");
    if (len != big || seq_of(buf.data()) != seq++ || buf[len - 1] != 'x')
      throw std::runtime_error("C: wrong 1 MiB message");
  }
  return bench::seconds_since(t0);
}

// Ping-pong: `k` round trips, their times (ns) appended to `ns` unless `ns` is null.
void coproc_ping(cp::connection& c, std::uint64_t k, std::vector<double>* ns) {
  message m{};
  for (std::uint64_t i = 0; i < k; ++i) {
    set_seq(m.data(), i);
    const auto t0 = bench::clock::now();
    c.send(m);
    const message r = c.receive<message>();
    const auto t1 = bench::clock::now();
    if (seq_of(r.data()) != i) throw std::runtime_error("coproc: wrong echo");
    if (ns) ns->push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
  }
}

void coproc_async_ping(asio::io_context& ctx, cp::connection& c, std::uint64_t k,
                       std::vector<double>* ns) {
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        message m{};
        for (std::uint64_t i = 0; i < k; ++i) {
          set_seq(m.data(), i);
          const auto t0 = bench::clock::now();
          co_await c.async_send(m);
          const message r = co_await c.async_receive<message>();
          const auto t1 = bench::clock::now();
          if (seq_of(r.data()) != i) throw std::runtime_error("coproc: wrong echo");
          if (ns) ns->push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
        }
      },
      rethrow);
  ctx.restart();
  ctx.run();
}

void c_ping(int fd, std::uint64_t k, std::vector<double>* ns) {
  c_small_frame f, r;
  for (std::uint64_t i = 0; i < k; ++i) {
    set_seq(f.bytes + header, i);
    const auto t0 = bench::clock::now();
    write_all(fd, f.bytes, sizeof f.bytes);
    expect(read_all(fd, r.bytes, sizeof r.bytes), "C: end of stream");
    const auto t1 = bench::clock::now();
    if (seq_of(r.bytes + header) != i) throw std::runtime_error("C: wrong echo");
    if (ns) ns->push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
  }
}

struct latency {
  double p50, p99;  // microseconds
};

latency percentiles(std::vector<double>& ns) {
  if (ns.empty()) return {std::nan(""), std::nan("")};
  std::sort(ns.begin(), ns.end());
  const std::size_t n = ns.size();
  return {ns[n / 2] / 1e3, ns[std::min(n - 1, n * 99 / 100)] / 1e3};
}

// Runs the chunks of `sides` (each a function of the chunk size) round-robin, the first side
// of each round rotating.
void interleave(const std::vector<std::uint64_t>& chunks,
                const std::vector<std::function<void(std::uint64_t)>>& sides) {
  for (std::size_t j = 0; j < chunks.size(); ++j)
    for (std::size_t s = 0; s < sides.size(); ++s) sides[(j + s) % sides.size()](chunks[j]);
}

// --- Python peer ---------------------------------------------------------------------------------

// Runs pipe_peer.py and returns its figures by name; empty (after a note) without python3.
std::map<std::string, double> python_figures(const std::vector<std::string>& args, bool& missing) {
  return bench::python_peer_figures(COPROC_BENCH_PIPE_PEER, args, missing);
}

}  // namespace

int main(int argc, char** argv) try {
  bench::options opt(argc, argv);
  const int runs = static_cast<int>(opt.get("runs", 5));
  const auto n_small = static_cast<std::uint64_t>(opt.get("small", 1000000));
  const auto n_big = static_cast<std::uint64_t>(opt.get("big", 8000));
  const auto n_ping = static_cast<std::uint64_t>(opt.get("pingpong", 200000));
  const auto py_small = opt.get("python-small", 500000);
  const auto py_big = opt.get("python-big", 1000);
  const auto py_ping = opt.get("python-pingpong", 100000);
  bool python_missing = opt.get("python", 1) == 0;
  const bool python = !python_missing;
  const std::string only = opt.get_string("only", "all");
  const std::string sides = opt.get_string("side", "all");
  const bool do_async = opt.get("async", 1) != 0;
  const bool verbose = opt.get("verbose", 0) != 0;
  const std::string pin = opt.get_string("pin", "same");
  opt.check();
  if (pin == "same" || pin == "split") {
    const int here = sched_getcpu();
    cpu_set_t allowed;
    if (here < 0 || sched_getaffinity(0, sizeof allowed, &allowed) != 0) bench::die("sched_getcpu");
    int other = -1;
    for (int cpu = 0; cpu < CPU_SETSIZE && other < 0; ++cpu)
      if (cpu != here && CPU_ISSET(cpu, &allowed)) other = cpu;
    parent_cpu = here;
    child_cpu = pin == "same" ? here : other;
    if (child_cpu < 0) throw std::runtime_error("--pin split needs two CPUs");
    pin_to(parent_cpu);
  } else if (pin != "none") {
    throw std::runtime_error("--pin must be same, split or none");
  }
  if (only != "all" && only != "small" && only != "big" && only != "pingpong")
    throw std::runtime_error("--only must be all, small, big or pingpong");
  if (sides != "all" && sides != "coproc" && sides != "c")
    throw std::runtime_error("--side must be all, coproc or c");
  const bool do_small = only == "all" || only == "small";
  const bool do_big = only == "all" || only == "big";
  const bool do_ping = only == "all" || only == "pingpong";
  const bool do_coproc = sides != "c", do_c = sides != "coproc";
  if (n_small == 0 || n_big == 0 || n_ping == 0) throw std::runtime_error("counts must be > 0");

  std::vector<char> small_buf(c_buffer), big_buf(big);
  std::string big_in;
  std::vector<double> ping_co, ping_coa, ping_c;
  ping_co.reserve(n_ping);
  ping_coa.reserve(n_ping);
  ping_c.reserve(n_ping);

  std::vector<double> co_s, co_as, c_s, py_s, co_b, c_b, py_b;
  std::vector<double> co_p50, co_p99, coa_p50, coa_p99, c_p50, c_p99, py_p50, py_p99;
  auto rate = [](std::uint64_t n, double s) { return static_cast<double>(n) / s; };
  for (int run = 0; run < runs; ++run) {
    asio::io_context ctx;
    if (do_small) {
      std::optional<coproc_peer> co, coa;  // a child each: see "one child per side" above
      std::optional<c_peer> c;
      if (do_coproc) co.emplace(ctx, coproc_small_sender);
      if (do_coproc && do_async) coa.emplace(ctx, coproc_small_sender);
      if (do_c) c.emplace(c_small_sender);
      double t_co = 0, t_coa = 0, t_c = 0;
      std::uint64_t seq_co = 0, seq_coa = 0, seq_c = 0;
      std::vector<std::function<void(std::uint64_t)>> s;
      if (co)
        s.push_back([&](std::uint64_t k) { t_co += coproc_small_blocking(co->conn, k, seq_co); });
      if (coa)
        s.push_back(
            [&](std::uint64_t k) { t_coa += coproc_small_async(ctx, coa->conn, k, seq_coa); });
      if (c) s.push_back([&](std::uint64_t k) { t_c += c_small(c->fd, k, seq_c, small_buf); });
      interleave(split(n_small, small_chunk), s);
      if (co) co_s.push_back(rate(n_small, t_co));
      if (coa) co_as.push_back(rate(n_small, t_coa));
      if (c) c_s.push_back(rate(n_small, t_c));
    }
    if (do_big) {
      std::optional<coproc_peer> co;
      std::optional<c_peer> c;
      if (do_coproc) co.emplace(ctx, coproc_big_sender);
      if (do_c) c.emplace(c_big_sender);
      double t_co = 0, t_c = 0;
      std::uint64_t seq_co = 0, seq_c = 0;
      std::vector<std::function<void(std::uint64_t)>> s;
      if (co)
        s.push_back([&](std::uint64_t k) { t_co += coproc_big(co->conn, k, seq_co, big_in); });
      if (c) s.push_back([&](std::uint64_t k) { t_c += c_big(c->fd, k, seq_c, big_buf); });
      interleave(split(n_big, big_chunk), s);
      if (co) co_b.push_back(rate(n_big * big, t_co) / 1e6);
      if (c) c_b.push_back(rate(n_big * big, t_c) / 1e6);
    }
    if (do_ping) {
      std::optional<coproc_peer> co, coa;
      std::optional<c_peer> c;
      if (do_coproc) co.emplace(ctx, coproc_echoer);
      if (do_coproc && do_async) coa.emplace(ctx, coproc_echoer);
      if (do_c) c.emplace(c_echoer);
      ping_co.clear();
      ping_coa.clear();
      ping_c.clear();
      std::vector<std::function<void(std::uint64_t)>> s;
      if (co) s.push_back([&](std::uint64_t k) { coproc_ping(co->conn, k, &ping_co); });
      if (coa)
        s.push_back([&](std::uint64_t k) { coproc_async_ping(ctx, coa->conn, k, &ping_coa); });
      if (c) s.push_back([&](std::uint64_t k) { c_ping(c->fd, k, &ping_c); });
      if (co) coproc_ping(co->conn, warmup, nullptr);
      if (coa) coproc_async_ping(ctx, coa->conn, warmup, nullptr);
      if (c) c_ping(c->fd, warmup, nullptr);
      interleave(split(n_ping, ping_chunk), s);
      if (co) {
        const latency l = percentiles(ping_co);
        co_p50.push_back(l.p50);
        co_p99.push_back(l.p99);
      }
      if (coa) {
        const latency l = percentiles(ping_coa);
        coa_p50.push_back(l.p50);
        coa_p99.push_back(l.p99);
      }
      if (c) {
        const latency l = percentiles(ping_c);
        c_p50.push_back(l.p50);
        c_p99.push_back(l.p99);
      }
    }
    std::vector<std::string> py_args;
    if (do_small) py_args.insert(py_args.end(), {"--small", std::to_string(py_small)});
    if (do_big) py_args.insert(py_args.end(), {"--big", std::to_string(py_big)});
    if (do_ping) py_args.insert(py_args.end(), {"--pingpong", std::to_string(py_ping)});
    if (child_cpu != parent_cpu)
      py_args.insert(py_args.end(), {"--child-cpu", std::to_string(child_cpu)});
    const auto py = python_figures(py_args, python_missing);
    auto take = [&](const char* name, std::vector<double>& into) {
      if (auto it = py.find(name); it != py.end()) into.push_back(it->second);
    };
    take("pipe_64B_python_pipe", py_s);
    take("pipe_1MiB_python_pipe", py_b);
    take("pingpong_64B_python_p50", py_p50);
    take("pingpong_64B_python_p99", py_p99);
    if (verbose) {  // this run's values, to stderr: medians hide how noisy the runs were
      auto last = [](const std::vector<double>& v) { return v.empty() ? std::nan("") : v.back(); };
      std::fprintf(stderr,
                   "# run %d: 64B blocking %.0f async %.0f C %.0f Python %.0f msgs/s | 1MiB %.0f C "
                   "%.0f Python %.0f MB/s | p50 blocking %.2f async %.2f C %.2f Python %.2f us\n",
                   run + 1, last(co_s), last(co_as), last(c_s), last(py_s), last(co_b), last(c_b),
                   last(py_b), last(co_p50), last(coa_p50), last(c_p50), last(py_p50));
    }
  }

  using bench::figure;
  using bench::median;
  const bool have_py = python && !python_missing;
  if (do_small) {
    const double b = median(co_s), a = median(co_as), c = median(c_s);
    figure("pipe_64B_messages", static_cast<double>(n_small), "msgs", 0);
    figure("pipe_64B_coproc_receive", b, "msgs/s", 0);
    figure("pipe_64B_coproc_async_receive", a, "msgs/s", 0);
    figure("pipe_64B_c_socketpair", c, "msgs/s", 0);
    figure("pipe_64B_ratio_vs_c", b / c, "x", 2);
    figure("pipe_64B_async_ratio_vs_c", a / c, "x", 2);
    if (have_py) {
      figure("pipe_64B_python_pipe", median(py_s), "msgs/s", 0);
      figure("pipe_64B_ratio_vs_python", b / median(py_s), "x", 2);
      figure("pipe_64B_async_ratio_vs_python", a / median(py_s), "x", 2);
    }
  }
  if (do_big) {
    const double b = median(co_b), c = median(c_b);
    figure("pipe_1MiB_messages", static_cast<double>(n_big), "msgs", 0);
    figure("pipe_1MiB_coproc_receive_bytes", b, "MB/s", 0);
    figure("pipe_1MiB_c_socketpair", c, "MB/s", 0);
    figure("pipe_1MiB_ratio_vs_c", b / c, "x", 2);
    if (have_py) {
      figure("pipe_1MiB_python_pipe", median(py_b), "MB/s", 0);
      figure("pipe_1MiB_ratio_vs_python", b / median(py_b), "x", 2);
    }
  }
  if (do_ping) {
    figure("pingpong_64B_round_trips", static_cast<double>(n_ping), "round trips", 0);
    figure("pingpong_64B_coproc_p50", median(co_p50), "us", 2);
    figure("pingpong_64B_coproc_p99", median(co_p99), "us", 2);
    figure("pingpong_64B_coproc_async_p50", median(coa_p50), "us", 2);
    figure("pingpong_64B_coproc_async_p99", median(coa_p99), "us", 2);
    figure("pingpong_64B_c_p50", median(c_p50), "us", 2);
    figure("pingpong_64B_c_p99", median(c_p99), "us", 2);
    figure("pingpong_64B_p50_ratio_vs_c", median(co_p50) / median(c_p50), "x", 2);
    figure("pingpong_64B_async_p50_ratio_vs_c", median(coa_p50) / median(c_p50), "x", 2);
    if (have_py) {
      figure("pingpong_64B_python_p50", median(py_p50), "us", 2);
      figure("pingpong_64B_python_p99", median(py_p99), "us", 2);
      figure("pingpong_64B_p50_ratio_vs_python", median(co_p50) / median(py_p50), "x", 2);
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "pipe_bench: %s\n", e.what());
  return 1;
}
