// Deterministic data shared by the helper program and the tests (no Boost, no coproc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace coproc_test {

/// The byte at `offset` of the `out N` / `err N` stream: 60 printable characters and a
/// newline, repeating (a prime period, so a dropped or repeated block shows).
inline char pattern_byte(std::uint64_t offset) {
  constexpr std::string_view table =
      "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX\n";
  static_assert(table.size() == 61);
  return table[offset % table.size()];
}

/// Fills `out` with the pattern starting at `offset`.
inline void fill_pattern(char* out, std::size_t n, std::uint64_t offset) {
  for (std::size_t i = 0; i < n; ++i) out[i] = pattern_byte(offset + i);
}

inline std::string pattern(std::size_t n, std::uint64_t offset = 0) {
  std::string s(n, '\0');
  fill_pattern(s.data(), n, offset);
  return s;
}

/// Index of the first byte of `s` that differs from the pattern at `offset`, or npos.
inline std::size_t pattern_mismatch(std::string_view s, std::uint64_t offset = 0) {
  for (std::size_t i = 0; i < s.size(); ++i)
    if (s[i] != pattern_byte(offset + i)) return i;
  return std::string_view::npos;
}

/// Line `i` (no newline) of `lines N LEN`: the decimal index padded with '.' to `len`.
inline std::string numbered_line(std::size_t i, std::size_t len) {
  std::string s = std::to_string(i);
  if (s.size() < len) s.append(len - s.size(), '.');
  return s;
}

/// The byte at `offset` of `longline N`: letters only, never a newline.
inline char long_line_byte(std::uint64_t offset) { return char('a' + offset % 26); }

/// What `nul` writes: every byte value, then NULs around newlines.
inline std::string nul_payload() {
  std::string s;
  for (int i = 0; i < 256; ++i) s.push_back(char(i));
  s.append(std::string_view("\0\0\n\0x\n", 6));
  return s;
}

/// What `crlf` writes.
inline constexpr std::string_view crlf_payload = "alpha\r\nbeta\r\n\r\ngam\rma\r\nlast\n";

}  // namespace coproc_test
