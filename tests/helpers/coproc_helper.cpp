// coproc_helper: the child program the tests start, so they depend on no tool's quirks.
//
// Usage: coproc_helper SUBCOMMAND [ARGS] [SUBCOMMAND [ARGS]]...
// Subcommands run in sequence; the program exits 0 after the last one unless one exits.
//
//   out N / err N        N bytes of the shared pattern (pattern.hpp) to stdout / stderr
//   out-err N            N pattern bytes to each of stdout and stderr, alternating chunks
//   outline T / errline T  T and a newline to stdout / stderr
//   partial T            T to stdout, no newline
//   lines N LEN          N numbered lines of LEN characters to stdout
//   delay-lines N MS     N lines "line I", sleeping MS milliseconds before each
//   nul                  nul_payload() to stdout (binary, NUL bytes)
//   crlf                 crlf_payload to stdout
//   longline N           N letters and a newline to stdout
//   exit CODE            exit with CODE
//   ignore-term          ignore SIGTERM, print "ready", sleep forever
//   no-term              ignore SIGTERM and go on
//   term-default         SIGTERM back to its default action
//   grandchild           fork a grandchild that keeps every descriptor and sleeps 30 s;
//                        print its pid and "ready" (one line each) to stdout
//   fds                  the open descriptors, one number a line
//   fdlink FD            where descriptor FD points ("<closed>" if not open)
//   notify FD            "ready" and a newline to descriptor FD
//   close FD             close descriptor FD
//   echo                 copy stdin to stdout until end-of-file
//   cat-count            read stdin to end-of-file, print the byte count
//   wait-stdin           read stdin to end-of-file, discarding it
//   readline             read one line from stdin, discarding it (a handshake)
//   interleave           lines "o TEXT" / "e TEXT" from stdin: TEXT to stdout / stderr
//   close-stdout         close stdout, then wait for end-of-file on stdin
//   crash / segv         die by SIGABRT / SIGSEGV (no core file)
//   env NAME             the variable's value or "<unset>"
//   environ              the whole environment, one NAME=VALUE a line
//   cwd                  the working directory
//   args A...            every remaining argument on its own line (consumes the rest)
//   argv0                argv[0]
//   sleep MS             sleep MS milliseconds
//   sleep-forever        sleep until killed
//   pid / pgid / sid     getpid() / getpgrp() / getsid(0)
//   sigstate             "SIGPIPE default|ignore" and "blocked none|<signals>"
//   echo-frames FD       read connection frames (8-byte header: payload size, tag) from
//                        socket FD and write each back whole, until end-of-file
//
// Plain C++ and POSIX on purpose: full writes, EINTR loops, no stdio buffering.

#include "pattern.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include <dirent.h>
#include <limits.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

using coproc_test::fill_pattern;

[[noreturn]] void die(const std::string& what) {
  std::string msg = "coproc_helper: " + what + "\n";
  // Best effort; stderr may be closed.
  [[maybe_unused]] auto r = ::write(2, msg.data(), msg.size());
  ::_exit(125);
}

void write_all(int fd, const char* data, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      // With SIGPIPE at its default the process is already dead here; 124 tells a test
      // that SIGPIPE was ignored.
      if (errno == EPIPE) ::_exit(124);
      die("write to fd " + std::to_string(fd) + ": " + std::strerror(errno));
    }
    data += w;
    n -= static_cast<std::size_t>(w);
  }
}

void write_str(int fd, std::string_view s) { write_all(fd, s.data(), s.size()); }
void write_line(int fd, std::string_view s) {
  std::string line(s);
  line.push_back('\n');
  write_str(fd, line);
}

void sleep_ms(long ms) {
  timespec ts{ms / 1000, (ms % 1000) * 1000000L};
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

[[noreturn]] void sleep_forever() {
  for (;;) ::pause();
}

/// Buffered stdin, shared by every subcommand so none over-reads past another's data.
struct input {
  std::vector<char> buf = std::vector<char>(1 << 16);
  std::size_t begin = 0, end = 0;
  bool eof = false;

  bool fill() {
    if (eof) return false;
    begin = end = 0;
    for (;;) {
      ssize_t r = ::read(0, buf.data(), buf.size());
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) die(std::string("read stdin: ") + std::strerror(errno));
      if (r == 0) {
        eof = true;
        return false;
      }
      end = static_cast<std::size_t>(r);
      return true;
    }
  }
  /// One line without its newline; false at end-of-file with nothing read.
  bool line(std::string& out) {
    out.clear();
    bool any = false;
    for (;;) {
      if (begin == end && !fill()) return any;
      any = true;
      auto* first = buf.data() + begin;
      auto* last = buf.data() + end;
      auto* nl = std::find(first, last, '\n');
      out.append(first, nl);
      if (nl != last) {
        begin = static_cast<std::size_t>(nl - buf.data()) + 1;
        return true;
      }
      begin = end;
    }
  }
  /// Calls `fn(data, n)` for everything up to end-of-file.
  template <typename Fn>
  void drain(Fn fn) {
    for (;;) {
      if (begin < end) fn(buf.data() + begin, end - begin);
      begin = end;
      if (!fill()) return;
    }
  }
};

input in;

std::uint64_t to_u64(const char* s) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') die(std::string("not a number: ") + s);
  return v;
}
int to_int(const char* s) { return static_cast<int>(to_u64(s)); }

void write_pattern(int fd, std::uint64_t n) {
  std::vector<char> chunk(1 << 16);
  std::uint64_t off = 0;
  while (off < n) {
    std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), n - off));
    fill_pattern(chunk.data(), k, off);
    write_all(fd, chunk.data(), k);
    off += k;
  }
}

void write_pattern_both(std::uint64_t n) {
  std::vector<char> chunk(1 << 16);
  std::uint64_t off = 0;
  while (off < n) {
    std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), n - off));
    fill_pattern(chunk.data(), k, off);
    write_all(1, chunk.data(), k);
    write_all(2, chunk.data(), k);
    off += k;
  }
}

void list_fds() {
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) die(std::string("opendir /proc/self/fd: ") + std::strerror(errno));
  std::vector<int> fds;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    int fd = std::atoi(e->d_name);
    if (fd != ::dirfd(d)) fds.push_back(fd);
  }
  ::closedir(d);
  std::sort(fds.begin(), fds.end());
  std::string s;
  for (int fd : fds) s += std::to_string(fd) + "\n";
  write_str(1, s);
}

void fd_link(int fd) {
  char buf[PATH_MAX];
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
  write_line(1, n < 0 ? std::string("<closed>") : std::string(buf, static_cast<std::size_t>(n)));
}

[[noreturn]] void crash(int sig) {
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  rlimit no_core{0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  ::signal(sig, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  ::sigprocmask(SIG_UNBLOCK, &set, nullptr);
  if (sig == SIGABRT) std::abort();
  ::raise(sig);
  ::_exit(126);
}

void signal_state() {
  struct sigaction sa {};
  ::sigaction(SIGPIPE, nullptr, &sa);
  std::string s = "SIGPIPE ";
  s += sa.sa_handler == SIG_IGN ? "ignore" : sa.sa_handler == SIG_DFL ? "default" : "handled";
  s += "\nblocked";
  sigset_t mask;
  ::sigprocmask(SIG_BLOCK, nullptr, &mask);
  bool any = false;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sigismember(&mask, sig) == 1) {
      s += " " + std::to_string(sig);
      any = true;
    }
  }
  if (!any) s += " none";
  write_line(1, s);
}

/// Waits until `fd` (possibly non-blocking: a passed connection end) is ready for `events`.
void wait_ready(int fd, short events) {
  pollfd p{fd, events, 0};
  while (::poll(&p, 1, -1) < 0)
    if (errno != EINTR) die(std::string("poll: ") + std::strerror(errno));
}

/// Reads exactly `n` bytes; false at end-of-file before the first byte (dies after it).
bool read_exactly(int fd, char* data, std::size_t n) {
  std::size_t done = 0;
  while (done < n) {
    ssize_t r = ::read(fd, data + done, n - done);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      wait_ready(fd, POLLIN);
      continue;
    }
    if (r < 0) die("read fd " + std::to_string(fd) + ": " + std::strerror(errno));
    if (r == 0) {
      if (done == 0) return false;
      die("end-of-file in the middle of a frame on fd " + std::to_string(fd));
    }
    done += static_cast<std::size_t>(r);
  }
  return true;
}

void write_exactly(int fd, const char* data, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      wait_ready(fd, POLLOUT);
      continue;
    }
    if (w < 0) die("send fd " + std::to_string(fd) + ": " + std::strerror(errno));
    data += w;
    n -= static_cast<std::size_t>(w);
  }
}

/// Echoes whole frames (header and payload, as <coproc/pipe.hpp> writes them) until end-of-file.
void echo_frames(int fd) {
  std::vector<char> frame;
  for (;;) {
    char header[8];
    if (!read_exactly(fd, header, sizeof header)) return;
    std::uint32_t size;
    std::memcpy(&size, header, sizeof size);
    frame.assign(header, header + sizeof header);
    frame.resize(sizeof header + size);
    if (!read_exactly(fd, frame.data() + sizeof header, size))
      die("end-of-file in the middle of a frame on fd " + std::to_string(fd));
    write_exactly(fd, frame.data(), frame.size());
  }
}

}  // namespace

int main(int argc, char** argv) {
  auto need = [&](int i, int n) {
    if (i + n >= argc) die(std::string("missing argument for ") + argv[i]);
  };
  for (int i = 1; i < argc; ++i) {
    std::string_view cmd = argv[i];
    if (cmd == "out" || cmd == "err") {
      need(i, 1);
      write_pattern(cmd == "out" ? 1 : 2, to_u64(argv[++i]));
    } else if (cmd == "out-err") {
      need(i, 1);
      write_pattern_both(to_u64(argv[++i]));
    } else if (cmd == "outline" || cmd == "errline") {
      need(i, 1);
      write_line(cmd == "outline" ? 1 : 2, argv[++i]);
    } else if (cmd == "partial") {
      need(i, 1);
      write_str(1, argv[++i]);
    } else if (cmd == "lines") {
      need(i, 2);
      std::uint64_t n = to_u64(argv[i + 1]);
      std::size_t len = to_u64(argv[i + 2]);
      i += 2;
      std::string block;
      for (std::uint64_t k = 0; k < n; ++k) {
        block += coproc_test::numbered_line(k, len);
        block += '\n';
        if (block.size() >= (1 << 16)) {
          write_str(1, block);
          block.clear();
        }
      }
      write_str(1, block);
    } else if (cmd == "delay-lines") {
      need(i, 2);
      std::uint64_t n = to_u64(argv[i + 1]);
      long ms = static_cast<long>(to_u64(argv[i + 2]));
      i += 2;
      for (std::uint64_t k = 0; k < n; ++k) {
        sleep_ms(ms);
        write_line(1, "line " + std::to_string(k));
      }
    } else if (cmd == "nul") {
      write_str(1, coproc_test::nul_payload());
    } else if (cmd == "crlf") {
      write_str(1, coproc_test::crlf_payload);
    } else if (cmd == "longline") {
      need(i, 1);
      std::uint64_t n = to_u64(argv[++i]);
      std::string s(static_cast<std::size_t>(n), '\0');
      for (std::uint64_t k = 0; k < n; ++k) s[k] = coproc_test::long_line_byte(k);
      s.push_back('\n');
      write_str(1, s);
    } else if (cmd == "exit") {
      need(i, 1);
      ::_exit(to_int(argv[++i]));
    } else if (cmd == "ignore-term") {
      ::signal(SIGTERM, SIG_IGN);
      write_line(1, "ready");
      sleep_forever();
    } else if (cmd == "no-term") {
      ::signal(SIGTERM, SIG_IGN);
    } else if (cmd == "term-default") {
      ::signal(SIGTERM, SIG_DFL);
    } else if (cmd == "grandchild") {
      pid_t pid = ::fork();
      if (pid < 0) die(std::string("fork: ") + std::strerror(errno));
      if (pid == 0) {
        // Keeps every descriptor, so it holds the pipes; bounded so a failed test leaves
        // no process behind for long.
        sleep_ms(30000);
        ::_exit(0);
      }
      write_line(1, std::to_string(pid));
      write_line(1, "ready");
    } else if (cmd == "fds") {
      list_fds();
    } else if (cmd == "fdlink") {
      need(i, 1);
      fd_link(to_int(argv[++i]));
    } else if (cmd == "notify") {
      need(i, 1);
      write_line(to_int(argv[++i]), "ready");
    } else if (cmd == "close") {
      need(i, 1);
      ::close(to_int(argv[++i]));
    } else if (cmd == "echo") {
      in.drain([](const char* p, std::size_t n) { write_all(1, p, n); });
    } else if (cmd == "cat-count") {
      std::uint64_t total = 0;
      in.drain([&](const char*, std::size_t n) { total += n; });
      write_line(1, std::to_string(total));
    } else if (cmd == "wait-stdin") {
      in.drain([](const char*, std::size_t) {});
    } else if (cmd == "readline") {
      std::string line;
      in.line(line);
    } else if (cmd == "interleave") {
      std::string line;
      while (in.line(line)) {
        if (line.size() >= 2 && line[1] == ' ' && (line[0] == 'o' || line[0] == 'e'))
          write_line(line[0] == 'o' ? 1 : 2, std::string_view(line).substr(2));
        else
          die("interleave: bad line: " + line);
      }
    } else if (cmd == "close-stdout") {
      ::close(1);
      in.drain([](const char*, std::size_t) {});
    } else if (cmd == "crash") {
      crash(SIGABRT);
    } else if (cmd == "segv") {
      crash(SIGSEGV);
    } else if (cmd == "env") {
      need(i, 1);
      const char* v = std::getenv(argv[++i]);
      write_line(1, v ? v : "<unset>");
    } else if (cmd == "environ") {
      std::string s;
      for (char** e = environ; *e; ++e) (s += *e) += '\n';
      write_str(1, s);
    } else if (cmd == "cwd") {
      char buf[PATH_MAX];
      if (!::getcwd(buf, sizeof buf)) die(std::string("getcwd: ") + std::strerror(errno));
      write_line(1, buf);
    } else if (cmd == "args") {
      std::string s;
      for (++i; i < argc; ++i) (s += argv[i]) += '\n';
      write_str(1, s);
    } else if (cmd == "argv0") {
      write_line(1, argv[0]);
    } else if (cmd == "sleep") {
      need(i, 1);
      sleep_ms(static_cast<long>(to_u64(argv[++i])));
    } else if (cmd == "sleep-forever") {
      sleep_forever();
    } else if (cmd == "pid") {
      write_line(1, std::to_string(::getpid()));
    } else if (cmd == "pgid") {
      write_line(1, std::to_string(::getpgrp()));
    } else if (cmd == "sid") {
      write_line(1, std::to_string(::getsid(0)));
    } else if (cmd == "sigstate") {
      signal_state();
    } else if (cmd == "echo-frames") {
      need(i, 1);
      echo_frames(to_int(argv[++i]));
    } else {
      die("unknown subcommand: " + std::string(cmd));
    }
  }
  return 0;
}
