// libFuzzer target for <coproc/codec.hpp>: arbitrary bytes decoded as one of several types
// (chosen by the first byte) and by decode_exception. Decoding either succeeds or throws
// coproc::decode_error; any other exception, a sanitizer report, or a decoded value that does
// not survive encode + decode unchanged is a bug, and aborts.
//
// Built and run by tests/fuzz/run_fuzz.sh (clang++ -fsanitize=fuzzer,address,undefined).
// Compiled with -DCODEC_FUZZ_WRITE_CORPUS instead, it is a program that writes the seed corpus:
// `codec_fuzz_corpus --write-corpus DIR`.
#include <coproc/codec.hpp>

#include <coproc/error.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <future>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <typeinfo>
#include <unordered_map>
#include <variant>
#include <vector>

namespace {

enum class level : std::int16_t { low, high };

struct point {  // block-copyable
  std::int32_t x;
  std::int32_t y;
  bool operator==(const point&) const = default;
};

struct leaf {
  std::string name;
  std::vector<std::int32_t> values;
  bool on = false;
  std::optional<std::int64_t> weight;
  bool operator==(const leaf&) const = default;
};

struct record {
  std::string title;
  std::vector<leaf> leaves;
  std::map<std::string, leaf> by_name;
  std::optional<std::vector<std::string>> tags;
  std::variant<std::monostate, std::int64_t, std::string, leaf> choice;
  std::array<bool, 3> flags{};
  std::vector<bool> bits;
  std::set<std::string> names;
  std::unordered_map<std::int32_t, std::string> by_id;
  std::vector<point> points;
  std::deque<std::string> queue;
  std::list<std::int16_t> small;
  std::chrono::milliseconds timeout{};
  level lvl = level::low;
  bool done = false;
  bool operator==(const record&) const = default;
};

using byte_buffer = std::vector<std::byte>;
using string_to_ints = std::map<std::string, std::vector<int>>;
using tuple_type =
    std::tuple<std::int32_t, std::string, bool, std::optional<std::uint16_t>, std::vector<point>>;
using variant_type =
    std::variant<std::monostate, bool, std::string, std::vector<std::string>, point>;

// A registered exception type, so that the factory path is reached too.
struct fuzz_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum target : std::uint8_t {
  t_record,
  t_bytes,
  t_map,
  t_tuple,
  t_variant,
  t_exception,
  target_count
};

[[noreturn]] void bug(const char* what, std::string_view detail) {
  std::fprintf(stderr, "codec_fuzz: %s: %.*s\n", what, static_cast<int>(detail.size()),
               detail.data());
  std::abort();
}

// Whether `in` decoded.
template <typename T>
bool check_value(std::string_view in) {
  T v;
  try {
    v = coproc::decode<T>(in);
  } catch (const coproc::decode_error& e) {
    if (e.code() != coproc::errc::malformed_message)
      bug("decode_error with another code", e.what());
    return false;
  }
  // What was accepted encodes again, and that encoding decodes to the same value.
  if (!(coproc::decode<T>(coproc::encode(v)) == v)) bug("value changed by a round trip", "");
  return true;
}

struct exception_view {
  const std::type_info* type = &typeid(void);
  std::string what;
  bool nul_in_path = false;  // a filesystem_error path with a NUL byte, which no real one has
};

exception_view view(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::filesystem::filesystem_error& x) {
    const auto nul = [](const std::filesystem::path& p) {
      return p.native().find('\0') != std::string::npos;
    };
    return {&typeid(x), x.what(), nul(x.path1()) || nul(x.path2())};
  } catch (const std::exception& x) {
    return {&typeid(x), x.what()};
  } catch (...) {
    return {};
  }
}

bool check_exception(std::string_view in) {
  std::exception_ptr e;
  try {
    e = coproc::decode_exception(in);
  } catch (const coproc::decode_error&) {
    return false;
  }
  if (!e) bug("decode_exception returned no exception", "");
  // A decoded exception is a real one: it crosses again as the same type. Its message is
  // compared from the second crossing on (a message with a NUL byte, which no real exception
  // has, is cut at the NUL by what() on the first), and not when a path has a NUL byte.
  const auto again = coproc::decode_exception(coproc::encode_exception(e));
  const exception_view first = view(e);
  const exception_view second = view(again);
  const exception_view third = view(coproc::decode_exception(coproc::encode_exception(again)));
  if (*first.type != *second.type)
    bug("exception type changed by a round trip", first.type->name());
  if (*second.type != *third.type)
    bug("exception type changed by a round trip", second.type->name());
  if (!second.nul_in_path && second.what != third.what)
    bug("exception message changed by a round trip", second.what);
  return true;
}

// Whether the input (target byte, then the encoding) decoded.
bool check(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return false;
  const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % target_count) {
    case t_record: return check_value<record>(in);
    case t_bytes: return check_value<byte_buffer>(in);
    case t_map: return check_value<string_to_ints>(in);
    case t_tuple: return check_value<tuple_type>(in);
    case t_variant: return check_value<variant_type>(in);
    default: return check_exception(in);
  }
}

}  // namespace

#ifndef CODEC_FUZZ_WRITE_CORPUS

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  coproc::register_exception<fuzz_error>();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    (void)check(data, size);
  } catch (const std::exception& e) {
    bug(typeid(e).name(), e.what());
  } catch (...) {
    bug("non-std exception", "");
  }
  return 0;
}

#else  // the seed corpus writer

namespace {

record sample_record() {
  record r;
  r.title = "title";
  r.leaves = {{"a", {1, 2, 3}, true, 7}, {std::string("b\0c", 3), {}, false, std::nullopt}};
  r.by_name = {{"x", {"xx", {42}, true, -1}}, {"", {}}};
  r.tags = std::vector<std::string>{"t1", "t2"};
  r.choice = leaf{"chosen", {5}, true, 9};
  r.flags = {true, false, true};
  r.bits = {true, true, false};
  r.names = {"n1", "n2"};
  r.by_id = {{1, "one"}, {-2, "minus two"}};
  r.points = {{1, 2}, {3, 4}};
  r.queue = {"q"};
  r.small = {1, -1};
  r.timeout = std::chrono::milliseconds(1500);
  r.lvl = level::high;
  r.done = true;
  return r;
}

std::vector<std::string> seeds(target t) {
  std::vector<std::string> out;
  switch (t) {
    case t_record: {
      out.push_back(coproc::encode(record{}));
      out.push_back(coproc::encode(sample_record()));
      record r = sample_record();
      r.choice = std::int64_t{-5};
      r.tags.reset();
      out.push_back(coproc::encode(r));
      r.choice = std::string("text");
      r.leaves.clear();
      out.push_back(coproc::encode(r));
      break;
    }
    case t_bytes:
      out.push_back(coproc::encode(byte_buffer{}));
      out.push_back(coproc::encode(byte_buffer{std::byte{0}, std::byte{0xff}, std::byte{7}}));
      out.push_back(coproc::encode(byte_buffer(64, std::byte{0x5a})));
      break;
    case t_map:
      out.push_back(coproc::encode(string_to_ints{}));
      out.push_back(coproc::encode(string_to_ints{{"a", {1}}, {"b", {}}, {"c", {-1, 2, 3}}}));
      out.push_back(coproc::encode(string_to_ints{{std::string("\0", 1), {0}}}));
      break;
    case t_tuple:
      out.push_back(coproc::encode(tuple_type{}));
      out.push_back(coproc::encode(tuple_type{-7, "seven", true, 7, {{1, 1}, {2, 2}}}));
      out.push_back(coproc::encode(tuple_type{1 << 30, "", false, std::nullopt, {}}));
      break;
    case t_variant:
      out.push_back(coproc::encode(variant_type{}));
      out.push_back(coproc::encode(variant_type{true}));
      out.push_back(coproc::encode(variant_type{std::string("str")}));
      out.push_back(coproc::encode(variant_type{std::vector<std::string>{"v", "w"}}));
      out.push_back(coproc::encode(variant_type{point{-1, 1}}));
      break;
    default: {
      namespace fs = std::filesystem;
      const auto ec = std::make_error_code(std::errc::no_such_file_or_directory);
      for (const auto& e :
           {std::make_exception_ptr(std::runtime_error("runtime")),
            std::make_exception_ptr(std::out_of_range("range")),
            std::make_exception_ptr(std::bad_alloc()),
            std::make_exception_ptr(std::system_error(ec, "open")),
            std::make_exception_ptr(std::system_error(std::error_code(13, std::system_category()))),
            std::make_exception_ptr(std::ios_base::failure("stream")),
            std::make_exception_ptr(std::future_error(std::future_errc::broken_promise)),
            std::make_exception_ptr(fs::filesystem_error("copy", "/a", "/b", ec)),
            std::make_exception_ptr(fs::filesystem_error("stat", "/c", ec)),
            std::make_exception_ptr(fuzz_error("registered")),
            std::make_exception_ptr(coproc::remote_error("some::type", "remote")),
            std::make_exception_ptr(42)})
        out.push_back(coproc::encode_exception(e));
      break;
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || std::string_view(argv[1]) != "--write-corpus") {
    std::fprintf(stderr, "usage: %s --write-corpus DIR\n", argv[0]);
    return 2;
  }
  coproc::register_exception<fuzz_error>();
  const std::filesystem::path dir = argv[2];
  std::filesystem::create_directories(dir);
  int written = 0;
  for (int t = 0; t < target_count; ++t) {
    int n = 0;
    for (const std::string& s : seeds(static_cast<target>(t))) {
      const std::string input = static_cast<char>(t) + s;
      if (!check(reinterpret_cast<const std::uint8_t*>(input.data()), input.size())) {
        std::fprintf(stderr, "seed %d/%d does not decode\n", t, n);
        return 1;
      }
      char name[32];
      std::snprintf(name, sizeof name, "seed-%d-%02d", t, n++);
      std::ofstream(dir / name, std::ios::binary) << input;
      ++written;
    }
  }
  std::printf("wrote %d seeds to %s\n", written, dir.c_str());
  return 0;
}

#endif
