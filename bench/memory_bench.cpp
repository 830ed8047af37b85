// Parent memory per live child: growth of the parent's Rss and of its Anonymous part
// (/proc/self/smaps_rollup) while `--children` (1000) children of /bin/sleep are alive.
// Pss is not used: it falls as children map the same shared libraries as the parent.
//
//   mem_c_posix_spawn    posix_spawn, stdio /dev/null, pids kept in a reserved vector
//   mem_coproc_null      coproc::spawn, stdio null, an async_wait pending on each child
//   mem_coproc_piped     as above with stdout piped (no read pending)
//   mem_coproc_reading   stdout piped with an async_read_line pending on each child
//
// Every variant of every run is measured in a fresh process (this program re-executed with
// --variant), after one warm-up spawn + wait of /bin/true with the same configuration, so
// the figures are per-child growth, not one-time set-up (thread-local stacks, the reactor).
// Options: --runs N (5), --children N (1000).
#include <coproc/coproc.hpp>

#include "bench_common.hpp"

#include <boost/asio/io_context.hpp>

#include <malloc.h>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace cp = coproc;

namespace {

const char* const variants[] = {"c_posix_spawn", "coproc_null", "coproc_piped", "coproc_reading"};

struct memory {
  long rss_kib = 0;
  long anon_kib = 0;
  long heap_bytes = 0;  // malloc'ed and not freed (mallinfo2), finer than pages
};

memory read_memory() {
  // Plain read(2) into a static buffer: measuring must not allocate.
  static char buf[8192];
  const int fd = open("/proc/self/smaps_rollup", O_RDONLY | O_CLOEXEC);
  if (fd < 0) bench::die("open /proc/self/smaps_rollup");
  std::size_t have = 0;
  for (ssize_t n; (n = read(fd, buf + have, sizeof buf - 1 - have)) > 0;)
    have += static_cast<std::size_t>(n);
  close(fd);
  buf[have] = '\0';
  memory m;
  auto field = [](const char* name) {
    const char* p = std::strstr(buf, name);
    return p ? std::strtol(p + std::strlen(name), nullptr, 10) : -1L;
  };
  m.rss_kib = field("\nRss:");
  m.anon_kib = field("\nAnonymous:");
  m.heap_bytes = static_cast<long>(mallinfo2().uordblks);
  return m;
}

// --- one variant, in a fresh process -------------------------------------------------------

memory c_variant(int n) {
  char arg_true[] = "/bin/true", arg_sleep[] = "/bin/sleep", arg_1000[] = "1000";
  char* true_argv[] = {arg_true, nullptr};
  char* sleep_argv[] = {arg_sleep, arg_1000, nullptr};
  bench::null_stdio_actions null_stdio;
  const posix_spawn_file_actions_t& fa = null_stdio.fa;
  std::vector<pid_t> pids;
  pids.reserve(static_cast<std::size_t>(n));
  pid_t pid;
  if (int rc = posix_spawn(&pid, arg_true, &fa, nullptr, true_argv, environ))
    bench::die("posix_spawn", rc);
  waitpid(pid, nullptr, 0);

  const memory before = read_memory();
  for (int i = 0; i < n; ++i) {
    if (int rc = posix_spawn(&pid, arg_sleep, &fa, nullptr, sleep_argv, environ))
      bench::die("posix_spawn", rc);
    pids.push_back(pid);
  }
  const memory after = read_memory();

  for (pid_t p : pids) kill(p, SIGKILL);
  for (pid_t p : pids)
    while (waitpid(p, nullptr, 0) < 0 && errno == EINTR) {
    }
  return {after.rss_kib - before.rss_kib, after.anon_kib - before.anon_kib,
          after.heap_bytes - before.heap_bytes};
}

memory coproc_variant(const std::string& variant, int n) {
  const bool piped = variant != "coproc_null";
  const bool reading = variant == "coproc_reading";
  auto configure = [&](cp::command c) {
    return std::move(c)
        .std_in(cp::stdio::null())
        .std_out(piped ? cp::stdio::pipe() : cp::stdio::null())
        .std_err(cp::stdio::null());
  };
  const cp::command warm_cmd = configure(cp::command{"/bin/true"});
  const cp::command sleep_cmd = configure(cp::command{"/bin/sleep", "1000"});

  asio::io_context ctx;
  std::vector<cp::child> children;
  children.reserve(static_cast<std::size_t>(n) + 1);
  int done = 0, read_done = 0;
  auto on_exit = [&](cp::error_code, cp::exit_status) { ++done; };
  auto on_line = [&](cp::error_code, std::optional<std::string>) { ++read_done; };
  {
    cp::child warm = cp::spawn(ctx.get_executor(), warm_cmd);
    warm.async_wait(on_exit);
    if (reading) warm.std_out().async_read_line(on_line);
    bench::run_until(ctx, [&] { return done == 1 && read_done == (reading ? 1 : 0); });
    done = read_done = 0;
  }

  const memory before = read_memory();
  for (int i = 0; i < n; ++i) {
    children.push_back(cp::spawn(ctx.get_executor(), sleep_cmd));
    children.back().async_wait(on_exit);
    if (reading) children.back().std_out().async_read_line(on_line);
  }
  const memory after = read_memory();

  for (auto& c : children) c.kill();
  bench::run_until(ctx, [&] { return done == n && read_done == (reading ? n : 0); });
  children.clear();
  return {after.rss_kib - before.rss_kib, after.anon_kib - before.anon_kib,
          after.heap_bytes - before.heap_bytes};
}

int run_variant(const std::string& variant, int n) {
  const memory m = variant == "c_posix_spawn" ? c_variant(n) : coproc_variant(variant, n);
  std::printf("%ld %ld %ld\n", m.rss_kib, m.anon_kib, m.heap_bytes);
  return 0;
}

std::string self_exe() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n < 0) bench::die("readlink /proc/self/exe");
  return std::string(buf, static_cast<std::size_t>(n));
}

}  // namespace

int main(int argc, char** argv) try {
  bench::options opt(argc, argv);
  const int runs = static_cast<int>(opt.get("runs", 5));
  const int n = static_cast<int>(opt.get("children", 1000));
  const std::string variant = opt.get_string("variant", "");
  opt.check();
  bench::raise_nofile_limit();
  if (!variant.empty()) return run_variant(variant, n);

  const std::string self = self_exe();
  constexpr std::size_t nv = std::size(variants);
  std::vector<double> rss[nv], anon[nv], heap[nv];
  for (int run = 0; run < runs; ++run) {
    for (std::size_t v = 0; v < nv; ++v) {
      const std::string out =
          bench::capture({self, "--variant", variants[v], "--children", std::to_string(n)});
      long r = 0, p = 0, h = 0;
      if (std::sscanf(out.c_str(), "%ld %ld %ld", &r, &p, &h) != 3)
        throw std::runtime_error("bad variant output: " + out);
      rss[v].push_back(static_cast<double>(r));
      anon[v].push_back(static_cast<double>(p));
      heap[v].push_back(static_cast<double>(h));
    }
  }

  bench::figure("mem_children", n, "children", 0);
  const double c_rss = bench::median(rss[0]);
  for (std::size_t v = 0; v < nv; ++v) {
    const std::string name = std::string("mem_") + variants[v];
    const double r = bench::median(rss[v]), a = bench::median(anon[v]);
    bench::figure((name + "_rss_growth").c_str(), r, "KiB", 0);
    bench::figure((name + "_anon_growth").c_str(), a, "KiB", 0);
    bench::figure((name + "_rss_per_child").c_str(), r / n, "KiB", 3);
    bench::figure((name + "_heap_per_child").c_str(), bench::median(heap[v]) / n, "B", 0);
    // Growth over a near-zero baseline makes a ratio meaningless; the excess is the figure.
    if (v > 0) bench::figure((name + "_rss_excess_over_c").c_str(), r - c_rss, "KiB", 0);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "memory_bench: %s\n", e.what());
  return 1;
}
