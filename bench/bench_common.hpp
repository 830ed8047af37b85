// Helpers shared by the coproc benchmarks: options, medians, figure lines, helper processes.
// Header-only and free of coproc: the C baselines use only what is here and libc.
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace bench {

using clock = std::chrono::steady_clock;

inline double seconds_since(clock::time_point t0) {
  return std::chrono::duration<double>(clock::now() - t0).count();
}

[[noreturn]] inline void die(const char* what, int err = errno) {
  std::fprintf(stderr, "bench: %s: %s\n", what, std::strerror(err));
  std::exit(2);
}

/// `--name value` options. Every option must be read with `get` before `check`, which
/// rejects the ones nobody asked for (typos must not silently keep a default).
class options {
 public:
  options(int argc, char** argv) : args_(argv + 1, argv + argc), used_(args_.size(), false) {}

  long long get(std::string_view name, long long fallback) {
    for (std::size_t i = 0; i + 1 < args_.size(); ++i) {
      if (args_[i].substr(0, 2) == "--" && args_[i].substr(2) == name) {
        used_[i] = used_[i + 1] = true;
        char* end = nullptr;
        long long v = std::strtoll(args_[i + 1].data(), &end, 10);
        if (*end != '\0') usage("not a number: " + std::string(args_[i + 1]));
        return v;
      }
    }
    return fallback;
  }
  std::string get_string(std::string_view name, std::string fallback) {
    for (std::size_t i = 0; i + 1 < args_.size(); ++i) {
      if (args_[i].substr(0, 2) == "--" && args_[i].substr(2) == name) {
        used_[i] = used_[i + 1] = true;
        return std::string(args_[i + 1]);
      }
    }
    return fallback;
  }
  void check() const {
    for (std::size_t i = 0; i < args_.size(); ++i)
      if (!used_[i]) usage("unknown argument: " + std::string(args_[i]));
  }

 private:
  [[noreturn]] static void usage(const std::string& msg) {
    std::fprintf(stderr, "bench: %s\n", msg.c_str());
    std::exit(2);
  }
  std::vector<std::string_view> args_;
  std::vector<bool> used_;
};

inline double median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/// One figure: `name: value unit`, flushed at once so a runner shows progress.
inline void figure(const char* name, double value, const char* unit, int decimals = 1) {
  std::printf("%s: %.*f %s\n", name, decimals, value, unit);
  std::fflush(stdout);
}

/// `name_ratio: value x` for a coproc figure against its C baseline.
inline void ratio(const std::string& name, double value) {
  figure((name + "_ratio").c_str(), value, "x", 2);
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (every coproc child holds a pidfd).
inline void raise_nofile_limit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
}

/// posix_spawn file actions putting the child's stdin, stdout and stderr on /dev/null, as
/// coproc's `stdio::null()` does. Destroyed with the object.
struct null_stdio_actions {
  posix_spawn_file_actions_t fa;
  null_stdio_actions() {
    posix_spawn_file_actions_init(&fa);
    for (int fd = 0; fd < 3; ++fd)
      posix_spawn_file_actions_addopen(&fa, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0);
  }
  ~null_stdio_actions() { posix_spawn_file_actions_destroy(&fa); }
  null_stdio_actions(const null_stdio_actions&) = delete;
  null_stdio_actions& operator=(const null_stdio_actions&) = delete;
};

/// Runs `argv` (looked up in PATH), waits for it and returns its stdout; stderr is
/// inherited. Throws when it cannot be started or does not exit with 0. Used outside every
/// timed region (the Python peers time themselves).
inline std::string capture(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) die("pipe2");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  pid_t pid;
  int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(p[1]);
  if (rc != 0) {
    close(p[0]);
    throw std::runtime_error("cannot start " + args[0] + ": " + std::strerror(rc));
  }
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = read(p[0], buf, sizeof buf);
    if (n > 0)
      out.append(buf, static_cast<std::size_t>(n));
    else if (n == 0 || errno != EINTR)
      break;
  }
  close(p[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    throw std::runtime_error(args[0] + " failed (status " + std::to_string(st) + ")");
  return out;
}

/// Runs `ctx` (an io_context) one handler at a time until `done()`, leaving its other work
/// pending. Restarts it first if it had stopped for lack of work; throws if it runs out of
/// work before `done()` (a bench bug, which would otherwise spin).
template <typename Context, typename Pred>
void run_until(Context& ctx, Pred done) {
  if (ctx.stopped()) ctx.restart();
  while (!done())
    if (ctx.run_one() == 0 && !done()) throw std::runtime_error("io_context ran out of work");
}

/// The first number in `s` (NaN if none).
inline double parse_number(const std::string& s) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  return end == s.c_str() ? std::nan("") : v;
}

/// Runs a Python peer (`python3 script args...`) and returns its `name: value unit` figures by
/// name. Without python3, or when the peer fails, prints a note, sets `missing` (later calls
/// then return at once) and returns no figures.
inline std::map<std::string, double> python_peer_figures(const char* script,
                                                         const std::vector<std::string>& args,
                                                         bool& missing) {
  std::map<std::string, double> out;
  if (missing) return out;
  std::vector<std::string> cmd{"python3", script};
  cmd.insert(cmd.end(), args.begin(), args.end());
  std::string text;
  try {
    text = capture(cmd);
  } catch (const std::exception& e) {
    std::printf("# note: Python peer skipped (%s)\n", e.what());
    std::fflush(stdout);
    missing = true;
    return out;
  }
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    const std::string line = text.substr(pos, nl - pos);
    const std::size_t colon = line.find(": ");
    if (colon != std::string::npos)
      out[line.substr(0, colon)] = parse_number(line.substr(colon + 2));
    pos = nl + 1;
  }
  return out;
}

}  // namespace bench
