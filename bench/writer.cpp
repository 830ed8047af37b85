// The benchmarks' writer child: writes a fixed buffer to stdout, repeatedly.
//
//   bench_writer BYTES             BYTES bytes in 1 MiB writes (the last one shorter)
//   bench_writer BYTES LINE_LEN    BYTES / LINE_LEN lines of LINE_LEN bytes (the last byte
//                                  of each a '\n'), in writes of the largest whole number
//                                  of lines that fits in 1 MiB
//
// Exits 0 when everything was written, 1 on a write error (EPIPE included), 2 on bad usage.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s BYTES [LINE_LEN]\n", argv[0]);
    return 2;
  }
  constexpr unsigned long long mib = 1 << 20;
  unsigned long long bytes = std::strtoull(argv[1], nullptr, 10);
  const unsigned long long line = argc == 3 ? std::strtoull(argv[2], nullptr, 10) : 0;
  if (argc == 3 && (line == 0 || line > mib)) {
    std::fprintf(stderr, "%s: LINE_LEN must be 1..1048576\n", argv[0]);
    return 2;
  }

  std::vector<char> buf(line ? mib / line * line : mib);
  if (line) {
    bytes = bytes / line * line;
    for (std::size_t i = 0; i < buf.size(); ++i)
      buf[i] = (i + 1) % line == 0 ? '\n' : static_cast<char>('a' + i % line % 26);
  } else {
    std::memset(buf.data(), 'x', buf.size());
  }

  while (bytes > 0) {
    std::size_t n = bytes < buf.size() ? static_cast<std::size_t>(bytes) : buf.size();
    const char* p = buf.data();
    while (n > 0) {
      const ssize_t w = write(1, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        return 1;
      }
      p += w;
      n -= static_cast<std::size_t>(w);
      bytes -= static_cast<unsigned long long>(w);
    }
  }
  return 0;
}
