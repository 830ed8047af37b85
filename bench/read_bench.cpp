// Read throughput from a child's stdout (the bench_writer child, through a 1 MiB pipe).
//
//   chunks_*   BYTES (1 GiB) written in 1 MiB writes, read with a 1 MiB buffer:
//              pipe_reader::async_read_some in a coroutine vs a blocking C read() loop
//              vs Python asyncio `proc.stdout.read(1 << 20)`.
//   lines_*    the same number of bytes as 100-byte lines: async_for_each_line (the fast
//              path) and async_read_line (one std::string per line) vs a C read() + memchr
//              line splitter over a 1 MiB buffer vs Python asyncio `readline()` (on
//              --python-line-bytes, 256 MiB by default: a rate, so sizes compare).
//
// Every measurement spans spawning the writer to reaping it. MB/s are 10^6 bytes/s.
// Options: --runs N (5), --bytes B (1 GiB), --line L (100), --python-line-bytes B
// (256 MiB), --python 0|1 (1), --only all|chunks|lines (all), --c-line-buffer B (1 MiB:
// the C line splitter's buffer; coproc's reader buffer is internal).
#include <coproc/coproc.hpp>

#include "bench_common.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/system/system_error.hpp>

#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace asio = boost::asio;
namespace cp = coproc;

#ifndef COPROC_BENCH_WRITER
#error "COPROC_BENCH_WRITER must name the bench_writer program"
#endif

namespace {

constexpr std::size_t mib = std::size_t{1} << 20;
constexpr std::size_t pipe_size = mib;  // both sides
constexpr std::size_t chunk = mib;      // read buffer of the chunk figures, both sides
const std::string writer = COPROC_BENCH_WRITER;

void rethrow(const std::exception_ptr& e) {
  if (e) std::rethrow_exception(e);
}

void expect(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("wrong result: ") + what);
}

std::vector<std::string> writer_args(std::uint64_t bytes, std::size_t line) {
  std::vector<std::string> a{writer, std::to_string(bytes)};
  if (line) a.push_back(std::to_string(line));
  return a;
}

// --- coproc ------------------------------------------------------------------------------

// Spawns the writer with stdout piped, runs `body` on the child in a coroutine, reaps it.
// Returns the elapsed seconds from spawn to reap.
double coproc_measure(std::uint64_t bytes, std::size_t line,
                      const std::function<asio::awaitable<void>(cp::child&)>& body) {
  auto args = writer_args(bytes, line);
  const auto cmd = cp::command{args[0]}
                       .args(std::vector<std::string>(args.begin() + 1, args.end()))
                       .std_out(cp::stdio::pipe())
                       .pipe_size(pipe_size);
  asio::io_context ctx;
  const auto t0 = bench::clock::now();
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        cp::child c = cp::spawn(ctx.get_executor(), cmd);
        co_await body(c);
        const cp::exit_status st = co_await c.async_wait();
        expect(st.success(), "writer failed");
      },
      rethrow);
  ctx.run();
  return bench::seconds_since(t0);
}

double coproc_chunks(std::uint64_t bytes, std::vector<char>& buf) {
  std::uint64_t got = 0;
  const double s = coproc_measure(bytes, 0, [&](cp::child& c) -> asio::awaitable<void> {
    for (;;) {
      auto [ec, n] = co_await c.std_out().async_read_some(asio::buffer(buf),
                                                          asio::as_tuple(asio::use_awaitable));
      got += n;
      if (ec == asio::error::eof) break;
      if (ec) throw boost::system::system_error(ec);
    }
  });
  expect(got == bytes, "chunks: byte count");
  return s;
}

double coproc_lines_fast(std::uint64_t bytes, std::size_t line) {
  std::uint64_t lines = 0, chars = 0;
  const double s = coproc_measure(bytes, line, [&](cp::child& c) -> asio::awaitable<void> {
    lines =
        co_await c.std_out().async_for_each_line([&](std::string_view l) { chars += l.size(); });
  });
  expect(lines == bytes / line && chars == lines * (line - 1), "for_each_line: line count");
  return s;
}

double coproc_lines_read_line(std::uint64_t bytes, std::size_t line) {
  std::uint64_t lines = 0, chars = 0;
  const double s = coproc_measure(bytes, line, [&](cp::child& c) -> asio::awaitable<void> {
    while (auto l = co_await c.std_out().async_read_line()) {
      ++lines;
      chars += l->size();
    }
  });
  expect(lines == bytes / line && chars == lines * (line - 1), "read_line: line count");
  return s;
}

// --- C baseline ----------------------------------------------------------------------------

struct c_child {
  pid_t pid;
  int fd;  // read end, blocking
};

c_child c_start(std::uint64_t bytes, std::size_t line) {
  auto args = writer_args(bytes, line);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) bench::die("pipe2");
  if (fcntl(p[0], F_SETPIPE_SZ, static_cast<int>(pipe_size)) < static_cast<int>(pipe_size))
    bench::die("F_SETPIPE_SZ");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  pid_t pid;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) bench::die("posix_spawn", rc);
  close(p[1]);
  return {pid, p[0]};
}

void c_finish(const c_child& c) {
  close(c.fd);
  int st = 0;
  while (waitpid(c.pid, &st, 0) < 0 && errno == EINTR) {
  }
  expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "writer failed");
}

ssize_t read_retry(int fd, char* p, std::size_t n) {
  for (;;) {
    const ssize_t r = read(fd, p, n);
    if (r >= 0 || errno != EINTR) return r;
  }
}

double c_chunks(std::uint64_t bytes, std::vector<char>& buf) {
  const auto t0 = bench::clock::now();
  const c_child c = c_start(bytes, 0);
  std::uint64_t got = 0;
  for (;;) {
    const ssize_t n = read_retry(c.fd, buf.data(), buf.size());
    if (n < 0) bench::die("read");
    if (n == 0) break;
    got += static_cast<std::uint64_t>(n);
  }
  c_finish(c);
  const double s = bench::seconds_since(t0);
  expect(got == bytes, "C chunks: byte count");
  return s;
}

// A real line splitter, not a newline counter: every line is handed over as one contiguous
// view (without "\n" or "\r\n"), the partial last line moved to the front before the next
// read, like the coproc reader must.
double c_lines(std::uint64_t bytes, std::size_t line, std::vector<char>& buf) {
  const auto t0 = bench::clock::now();
  const c_child c = c_start(bytes, line);
  std::uint64_t lines = 0, chars = 0;
  std::size_t have = 0;
  auto sink = [&](const char* b, std::size_t len) {
    if (len > 0 && b[len - 1] == '\r') --len;
    ++lines;
    chars += len;
  };
  for (;;) {
    const ssize_t n = read_retry(c.fd, buf.data() + have, buf.size() - have);
    if (n < 0) bench::die("read");
    if (n == 0) break;
    const char* p = buf.data();
    const char* end = p + have + static_cast<std::size_t>(n);
    while (auto* nl = static_cast<const char*>(std::memchr(p, '\n', end - p))) {
      sink(p, static_cast<std::size_t>(nl - p));
      p = nl + 1;
    }
    have = static_cast<std::size_t>(end - p);
    if (have == buf.size()) bench::die("line longer than the buffer", 0);
    std::memmove(buf.data(), p, have);
  }
  if (have) sink(buf.data(), have);
  c_finish(c);
  const double s = bench::seconds_since(t0);
  expect(lines == bytes / line && chars == lines * (line - 1), "C lines: line count");
  return s;
}

// --- Python asyncio peer ---------------------------------------------------------------------

constexpr const char* python_read = R"(
import asyncio, sys, time
writer, nbytes, mode, line = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
async def main():
    args = [writer, str(nbytes)] + ([str(line)] if mode == 'lines' else [])
    t0 = time.perf_counter()
    p = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    got = 0
    if mode == 'chunks':
        while True:
            b = await p.stdout.read(1 << 20)
            if not b:
                break
            got += len(b)
    else:
        while True:
            l = await p.stdout.readline()
            if not l:
                break
            got += len(l)
    if await p.wait() != 0:
        raise SystemExit('writer failed')
    dt = time.perf_counter() - t0
    if got != nbytes // (line if mode == 'lines' else 1) * (line if mode == 'lines' else 1):
        raise SystemExit('wrong byte count %d' % got)
    return got / dt / 1e6
print(asyncio.run(main()))
)";

double python_rate(std::uint64_t bytes, const char* mode, std::size_t line) {
  try {
    return bench::parse_number(bench::capture(
        {"python3", "-c", python_read, writer, std::to_string(bytes), mode, std::to_string(line)}));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "read_bench: python peer: %s\n", e.what());
    return std::nan("");
  }
}

}  // namespace

int main(int argc, char** argv) try {
  bench::options opt(argc, argv);
  const int runs = static_cast<int>(opt.get("runs", 5));
  const auto bytes = static_cast<std::uint64_t>(opt.get("bytes", 1LL << 30));
  const auto line = static_cast<std::size_t>(opt.get("line", 100));
  const auto py_line_bytes = static_cast<std::uint64_t>(opt.get("python-line-bytes", 256LL << 20));
  const bool python = opt.get("python", 1) != 0;
  const auto c_line_buffer = static_cast<std::size_t>(opt.get("c-line-buffer", mib));
  const std::string only = opt.get_string("only", "all");
  opt.check();
  if (only != "all" && only != "chunks" && only != "lines")
    throw std::runtime_error("--only must be all, chunks or lines");
  const bool do_chunks = only != "lines", do_lines = only != "chunks";
  if (line < 2 || line > mib / 2) throw std::runtime_error("--line must be 2..524288");

  std::vector<char> buf(chunk, '\0');
  std::vector<char> line_buf(c_line_buffer, '\0');
  const std::uint64_t line_bytes = bytes / line * line;
  auto rate = [](std::uint64_t n, double s) { return static_cast<double>(n) / s / 1e6; };

  std::vector<double> co_chunks, c_chunk, co_fast, co_line, c_line, py_chunks, py_lines;
  for (int run = 0; run < runs; ++run) {
    // Alternate which side goes first, so neither always meets a warmer machine.
    const bool coproc_first = run % 2 == 0;
    if (do_chunks) {
      for (int side = 0; side < 2; ++side) {
        if ((side == 0) == coproc_first)
          co_chunks.push_back(rate(bytes, coproc_chunks(bytes, buf)));
        else
          c_chunk.push_back(rate(bytes, c_chunks(bytes, buf)));
      }
      if (python) py_chunks.push_back(python_rate(bytes, "chunks", line));
    }
    if (do_lines) {
      for (int side = 0; side < 2; ++side) {
        if ((side == 0) == coproc_first) {
          co_fast.push_back(rate(line_bytes, coproc_lines_fast(bytes, line)));
          co_line.push_back(rate(line_bytes, coproc_lines_read_line(bytes, line)));
        } else {
          c_line.push_back(rate(line_bytes, c_lines(bytes, line, line_buf)));
        }
      }
      if (python) py_lines.push_back(python_rate(py_line_bytes, "lines", line));
    }
  }

  const double m_co = bench::median(co_chunks), m_c = bench::median(c_chunk);
  const double m_fast = bench::median(co_fast), m_line = bench::median(co_line);
  const double m_cl = bench::median(c_line);
  bench::figure("read_bytes", static_cast<double>(bytes), "B", 0);
  if (do_chunks) {
    bench::figure("chunks_coproc_read_some", m_co, "MB/s", 0);
    bench::figure("chunks_c_read", m_c, "MB/s", 0);
    bench::ratio("chunks_coproc_vs_c", m_co / m_c);
    if (python) {
      bench::figure("chunks_python_asyncio_read", bench::median(py_chunks), "MB/s", 0);
      bench::ratio("chunks_coproc_vs_python", m_co / bench::median(py_chunks));
    }
  }
  if (!do_lines) return 0;
  bench::figure("line_length", static_cast<double>(line), "B", 0);
  bench::figure("lines_coproc_for_each_line", m_fast, "MB/s", 0);
  bench::figure("lines_coproc_read_line", m_line, "MB/s", 0);
  bench::figure("lines_c_buffer", static_cast<double>(c_line_buffer), "B", 0);
  bench::figure("lines_c_read_memchr", m_cl, "MB/s", 0);
  bench::ratio("lines_for_each_line_vs_c", m_fast / m_cl);
  bench::ratio("lines_read_line_vs_c", m_line / m_cl);
  if (python) {
    bench::figure("lines_python_bytes", static_cast<double>(py_line_bytes), "B", 0);
    bench::figure("lines_python_asyncio_readline", bench::median(py_lines), "MB/s", 0);
    bench::ratio("lines_read_line_vs_python", m_line / bench::median(py_lines));
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "read_bench: %s\n", e.what());
  return 1;
}
