#include <coproc/codec.hpp>

#include <coproc/error.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <ios>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <tuple>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

// Exception types with a stable demangled name (outside the anonymous namespace).
namespace codec_test_app {
struct parse_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct registered_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct replaced_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct coded_error : std::runtime_error {
  coded_error(int code, const std::string& message) : std::runtime_error(message), code(code) {}
  int code;
};
struct throwing_factory_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace codec_test_app

namespace {

using coproc::decode;
using coproc::decode_error;
using coproc::encode;

// --- value types ------------------------------------------------------------------------

enum class color : std::uint8_t { red, green, blue };
enum plain_enum { first, second, third };  // unscoped, no fixed underlying type

struct point {
  std::int32_t x;
  std::int32_t y;
  bool operator==(const point&) const = default;
};

struct pixel {  // nested, trivially copyable, no padding: block-copyable
  point at;
  color c;
  std::array<std::uint8_t, 3> rgb;
  bool operator==(const pixel&) const = default;
};

// Arrays inside an aggregate are std::array: Boost.PFR cannot reflect C array members (and
// g++ 12 crashes reflecting a std::array of non-trivial elements, such as std::string).
struct with_arrays {
  std::string name;
  std::array<std::int32_t, 4> values;
  std::array<std::array<std::uint16_t, 3>, 2> grid;
  std::array<std::optional<bool>, 2> flags;
  bool operator==(const with_arrays&) const = default;
};

struct flagged {  // trivially copyable, but a bool field: field by field
  std::int32_t n;
  bool flag;
  bool operator==(const flagged&) const = default;
};

struct inner {
  std::string label;
  std::vector<std::int32_t> values;
  bool flag = false;
  bool operator==(const inner&) const = default;
};

struct outer {
  inner head;
  std::vector<inner> items;
  std::map<std::string, inner> by_name;
  std::optional<inner> maybe;
  std::variant<std::monostate, std::int64_t, std::string, inner> choice;
  std::array<point, 2> corners;
  color tint = color::red;
  plain_enum kind = first;
  bool done = false;
  bool operator==(const outer&) const = default;
};

outer sample_outer() {
  outer o;
  o.head = {"head", {1, 2, 3}, true};
  o.items = {{"a", {}, false}, {std::string("b\0c", 3), {-1, 7}, true}};
  o.by_name = {{"x", {"xx", {42}, true}}, {"", {"empty key", {}, false}}};
  o.maybe = inner{"maybe", {9}, false};
  o.choice = inner{"chosen", {5, 6}, true};
  o.corners = {point{1, 2}, point{-3, 4}};
  o.tint = color::blue;
  o.kind = third;
  o.done = true;
  return o;
}

// A user type with a `serialize` member (private data, public serialize).
class counter {
 public:
  counter() = default;
  counter(std::string name, int count) : name_(std::move(name)), count_(count) {}
  template <typename Archive>
  void serialize(Archive& ar) {
    ar(name_, count_);
  }
  bool operator==(const counter&) const = default;

 private:
  std::string name_;
  int count_ = 0;
};

// A user type with `save`/`load` members: stores tenths of a degree as an integer.
class temperature {
 public:
  temperature() = default;
  explicit temperature(double celsius) : celsius_(celsius) {}
  template <typename Archive>
  void save(Archive& ar) const {
    ar(static_cast<std::int64_t>(celsius_ * 10));
  }
  template <typename Archive>
  void load(Archive& ar) {
    std::int64_t tenths = 0;
    ar(tenths);
    celsius_ = static_cast<double>(tenths) / 10;
  }
  double celsius() const { return celsius_; }

 private:
  double celsius_ = 0;
};

// cereal's idiom for private serialization: a private member and `friend cereal::access`.
class private_serialize {
 public:
  private_serialize() = default;
  explicit private_serialize(int v) : v_(v) {}
  bool operator==(const private_serialize&) const = default;

 private:
  friend class cereal::access;
  template <typename Archive>
  void serialize(Archive& ar) {
    ar(v_);
  }
  int v_ = 0;
};

// An aggregate that brings its own serialize: that is used, not its fields.
struct only_first_field {
  std::int32_t kept = 0;
  std::int32_t dropped = 0;
  template <typename Archive>
  void serialize(Archive& ar) {
    ar(kept);
  }
};

// A versioned serialize member.
struct versioned {
  std::string s;
  template <typename Archive>
  void serialize(Archive& ar, std::uint32_t /*version*/) {
    ar(s);
  }
};

struct no_default {
  explicit no_default(int v) : v(v) {}
  template <typename Archive>
  void serialize(Archive& ar) {
    ar(v);
  }
  int v;
};

struct has_pointer {
  int* p;
};

template <typename T>
T round_trip(const T& v) {
  return decode<T>(encode(v));
}

// The decode_error's what() for bytes that must not decode as T ("" and a failure otherwise).
template <typename T>
std::string decode_failure(std::string_view bytes) {
  try {
    (void)decode<T>(bytes);
  } catch (const decode_error& e) {
    EXPECT_TRUE(e.code() == coproc::errc::malformed_message) << e.code().message();
    return e.what();
  }
  ADD_FAILURE() << "decoded " << bytes.size() << " bytes that are not a valid encoding";
  return {};
}

bool contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

template <typename T>
std::string bytes_of(const T& v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof v);
}

std::uint64_t length_prefix(const std::string& encoding) {
  std::uint64_t n = 0;
  EXPECT_GE(encoding.size(), sizeof n);
  if (encoding.size() >= sizeof n) std::memcpy(&n, encoding.data(), sizeof n);
  return n;
}

// --- what is encodable -----------------------------------------------------------------

static_assert(coproc::encodable<int>);
static_assert(coproc::encodable<outer>);
static_assert(coproc::encodable<with_arrays>);
static_assert(coproc::encodable<counter>);
static_assert(coproc::encodable<temperature>);
static_assert(coproc::encodable<private_serialize>);
static_assert(coproc::encodable<std::vector<std::byte>>);
static_assert(coproc::encodable<std::map<std::string, std::vector<int>>>);

static_assert(!coproc::encodable<int*>);
static_assert(!coproc::encodable<const char*>);
static_assert(!coproc::encodable<int&>);
static_assert(!coproc::encodable<const std::string&>);
static_assert(!coproc::encodable<std::unique_ptr<int>>);
static_assert(!coproc::encodable<std::shared_ptr<int>>);
static_assert(!coproc::encodable<std::thread>);
static_assert(!coproc::encodable<std::vector<std::thread>>);
static_assert(!coproc::encodable<std::map<std::string, std::thread>>);
static_assert(!coproc::encodable<std::optional<std::thread>>);
static_assert(!coproc::encodable<std::variant<int, std::thread>>);
static_assert(!coproc::encodable<std::tuple<int, int*>>);
static_assert(!coproc::encodable<has_pointer>);
static_assert(!coproc::encodable<no_default>);
// Decoding default-constructs nested values too.
static_assert(!coproc::encodable<std::vector<no_default>>);
static_assert(!coproc::encodable<std::optional<no_default>>);
static_assert(!coproc::encodable<std::variant<int, no_default>>);
static_assert(!coproc::encodable<std::pair<int, no_default>>);

// --- block-copyable types --------------------------------------------------------------

static_assert(coproc::bitwise_encodable<int>);
static_assert(coproc::bitwise_encodable<char>);
static_assert(coproc::bitwise_encodable<double>);
static_assert(coproc::bitwise_encodable<long double>);
static_assert(coproc::bitwise_encodable<color>);
static_assert(coproc::bitwise_encodable<std::byte>);
static_assert(coproc::bitwise_encodable<point>);
static_assert(coproc::bitwise_encodable<const point>);
static_assert(coproc::bitwise_encodable<pixel>);
static_assert(coproc::bitwise_encodable<std::array<int, 3>>);
static_assert(coproc::bitwise_encodable<std::array<point, 2>>);
static_assert(coproc::bitwise_encodable<int[4]>);

static_assert(!coproc::bitwise_encodable<bool>);
static_assert(!coproc::bitwise_encodable<plain_enum>);
static_assert(!coproc::bitwise_encodable<flagged>);
static_assert(!coproc::bitwise_encodable<std::array<bool, 2>>);
static_assert(!coproc::bitwise_encodable<std::string>);
static_assert(!coproc::bitwise_encodable<std::vector<int>>);
static_assert(!coproc::bitwise_encodable<std::optional<int>>);
static_assert(!coproc::bitwise_encodable<std::pair<int, int>>);
static_assert(!coproc::bitwise_encodable<with_arrays>);
static_assert(!coproc::bitwise_encodable<counter>);
static_assert(!coproc::bitwise_encodable<int*>);

// --- round trips -----------------------------------------------------------------------

template <typename T>
void expect_round_trip(const T& v) {
  EXPECT_EQ(round_trip(v), v);
}

TEST(codec, arithmetic_values_round_trip) {
  expect_round_trip(true);
  expect_round_trip(false);
  expect_round_trip('x');
  expect_round_trip(static_cast<char>(-1));
  expect_round_trip(static_cast<signed char>(-128));
  expect_round_trip(static_cast<unsigned char>(255));
  expect_round_trip(std::numeric_limits<std::int16_t>::min());
  expect_round_trip(std::numeric_limits<std::uint16_t>::max());
  expect_round_trip(std::numeric_limits<std::int32_t>::min());
  expect_round_trip(std::numeric_limits<std::uint32_t>::max());
  expect_round_trip(std::numeric_limits<std::int64_t>::min());
  expect_round_trip(std::numeric_limits<std::uint64_t>::max());
  expect_round_trip(3.25f);
  expect_round_trip(-1e300);
  expect_round_trip(std::numeric_limits<double>::infinity());
  expect_round_trip(1.0L / 3);
  expect_round_trip(std::numeric_limits<long double>::max());
  EXPECT_TRUE(std::isnan(round_trip(std::numeric_limits<double>::quiet_NaN())));
}

TEST(codec, enums_round_trip) {
  expect_round_trip(color::green);
  expect_round_trip(color::blue);
  expect_round_trip(second);
  expect_round_trip(third);
  expect_round_trip(std::byte{0xAB});
}

TEST(codec, strings_keep_embedded_nuls_and_every_byte_value) {
  expect_round_trip(std::string());
  expect_round_trip(std::string("a\0b\0", 4));
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  EXPECT_EQ(round_trip(all), all);
  EXPECT_EQ(round_trip(all).size(), 256u);
}

TEST(codec, sequence_containers_round_trip) {
  expect_round_trip(std::vector<int>{});
  expect_round_trip(std::vector<int>{1, -2, 3});
  expect_round_trip(std::vector<bool>{true, false, true});
  expect_round_trip(std::vector<std::string>{"", "a", std::string("\0", 1)});
  expect_round_trip(std::vector<std::vector<int>>{{}, {1}, {2, 3}});
  expect_round_trip(std::deque<int>{4, 5, 6});
  expect_round_trip(std::deque<std::string>{"d", "e"});
  expect_round_trip(std::list<double>{1.5, -2.5});
  expect_round_trip(std::list<std::string>{"l", ""});
  expect_round_trip(std::array<int, 3>{7, 8, 9});
  expect_round_trip(std::array<std::string, 2>{"x", "y"});
  expect_round_trip(std::array<bool, 3>{true, false, true});
}

TEST(codec, arrays_inside_an_aggregate_round_trip) {
  with_arrays v{"arr", {1, -2, 3, -4}, {{{1, 2, 3}, {4, 5, 6}}}, {true, std::nullopt}};
  EXPECT_EQ(round_trip(v), v);
}

TEST(codec, associative_containers_round_trip) {
  expect_round_trip(std::map<std::string, int>{{"a", 1}, {"b", 2}});
  expect_round_trip(std::map<int, std::vector<std::string>>{{1, {"x"}}, {-1, {}}});
  expect_round_trip(std::unordered_map<std::string, double>{{"pi", 3.14}, {"e", 2.72}});
  expect_round_trip(std::set<std::string>{"c", "a", "b"});
  expect_round_trip(std::set<int>{});
  expect_round_trip(std::unordered_set<int>{1, 2, 3, 100});
}

TEST(codec, optional_round_trips_empty_and_full) {
  expect_round_trip(std::optional<int>{});
  expect_round_trip(std::optional<int>{0});
  expect_round_trip(std::optional<std::string>{});
  expect_round_trip(std::optional<std::string>{"value"});
  expect_round_trip(std::optional<std::vector<int>>{std::vector<int>{}});
}

TEST(codec, variant_round_trips_each_alternative) {
  using v = std::variant<std::monostate, int, std::string, std::vector<double>, bool>;
  for (const v& value :
       {v{}, v{7}, v{std::string("seven")}, v{std::vector<double>{7.5}}, v{true}}) {
    SCOPED_TRACE(value.index());
    const v back = round_trip(value);
    EXPECT_EQ(back.index(), value.index());
    EXPECT_EQ(back, value);
  }
  // Two alternatives of the same type stay distinct.
  using twins = std::variant<int, int>;
  EXPECT_EQ(round_trip(twins(std::in_place_index<1>, 3)).index(), 1u);
  EXPECT_EQ(round_trip(std::monostate{}), std::monostate{});
}

TEST(codec, tuples_and_pairs_round_trip) {
  expect_round_trip(std::tuple<int, std::string, bool>{1, "two", true});
  expect_round_trip(std::tuple<>{});
  expect_round_trip(std::pair<std::string, double>{"half", 0.5});
  expect_round_trip(std::pair<int, std::pair<int, int>>{1, {2, 3}});
}

TEST(codec, chrono_durations_and_time_points_round_trip) {
  using namespace std::chrono;
  expect_round_trip(milliseconds(1234));
  expect_round_trip(nanoseconds(-5));
  expect_round_trip(hours(24));
  expect_round_trip(duration<double>(0.25));
  const auto now = system_clock::now();
  EXPECT_EQ(round_trip(now), now);
  const auto steady = steady_clock::now();
  EXPECT_EQ(round_trip(steady), steady);
  expect_round_trip(time_point<system_clock, seconds>(seconds(1700000000)));
}

TEST(codec, byte_buffers_round_trip_as_length_and_block) {
  std::vector<std::byte> bytes;
  std::vector<unsigned char> uchars;
  for (int i = 0; i < 300; ++i) {
    bytes.push_back(static_cast<std::byte>(i));
    uchars.push_back(static_cast<unsigned char>(i));
  }
  EXPECT_EQ(round_trip(bytes), bytes);
  EXPECT_EQ(round_trip(uchars), uchars);
  const std::string e = encode(bytes);
  EXPECT_EQ(e.size(), 8 + bytes.size());
  EXPECT_EQ(length_prefix(e), bytes.size());
  EXPECT_EQ(std::memcmp(e.data() + 8, bytes.data(), bytes.size()), 0);
  EXPECT_EQ(encode(uchars), e);
  EXPECT_EQ(encode(std::vector<std::byte>{}), std::string(8, '\0'));
}

TEST(codec, user_type_with_serialize_member_round_trips) {
  expect_round_trip(counter("hits", 42));
  expect_round_trip(std::vector<counter>{counter("a", 1), counter("b", 2)});
  expect_round_trip(std::map<std::string, counter>{{"k", counter("v", 3)}});
}

TEST(codec, user_type_with_save_and_load_members_round_trips) {
  EXPECT_DOUBLE_EQ(round_trip(temperature(21.5)).celsius(), 21.5);
  EXPECT_EQ(encode(temperature(21.5)).size(), sizeof(std::int64_t));
}

TEST(codec, user_type_with_private_serialize_and_cereal_access_round_trips) {
  expect_round_trip(private_serialize(17));
}

TEST(codec, user_type_with_versioned_serialize_round_trips) {
  EXPECT_EQ(round_trip(versioned{"v1"}).s, "v1");
}

TEST(codec, aggregate_with_its_own_serialize_member_uses_it_not_its_fields) {
  const only_first_field v{5, 6};
  EXPECT_EQ(encode(v).size(), sizeof(std::int32_t));
  const auto back = round_trip(v);
  EXPECT_EQ(back.kept, 5);
  EXPECT_EQ(back.dropped, 0);
}

TEST(codec, aggregates_round_trip_field_by_field) {
  expect_round_trip(point{3, -4});
  expect_round_trip(pixel{{1, 2}, color::green, {10, 20, 30}});
  expect_round_trip(flagged{9, true});
  expect_round_trip(inner{"label", {1, 2}, true});
  expect_round_trip(sample_outer());
  expect_round_trip(outer{});
  expect_round_trip(std::vector<outer>{sample_outer(), outer{}});
}

TEST(codec, encode_to_appends_and_decode_into_replaces) {
  std::string out = "prefix";
  coproc::encode_to(out, std::string("abc"));
  EXPECT_EQ(out, "prefix" + encode(std::string("abc")));

  std::vector<int> v{9, 9, 9, 9};
  coproc::decode_into(encode(std::vector<int>{1}), v);
  EXPECT_EQ(v, std::vector<int>{1});
  std::vector<point> points{{1, 1}, {2, 2}, {3, 3}};
  coproc::decode_into(encode(std::vector<point>{{7, 8}}), points);
  EXPECT_EQ(points, (std::vector<point>{{7, 8}}));
  std::map<int, int> m{{1, 1}, {2, 2}};
  coproc::decode_into(encode(std::map<int, int>{{3, 3}}), m);
  EXPECT_EQ(m, (std::map<int, int>{{3, 3}}));
  std::string s = "old contents";
  coproc::decode_into(encode(std::string("new")), s);
  EXPECT_EQ(s, "new");
}

// --- block-copy fast path --------------------------------------------------------------

TEST(codec, bitwise_values_encode_as_exactly_their_bytes) {
  EXPECT_EQ(encode(std::int32_t{-7}), bytes_of(std::int32_t{-7}));
  EXPECT_EQ(encode(2.5), bytes_of(2.5));
  EXPECT_EQ(encode(1.5L).size(), sizeof(long double));
  EXPECT_EQ(encode(color::blue), bytes_of(color::blue));
  const point p{1, 2};
  EXPECT_EQ(encode(p), bytes_of(p));
  const pixel px{{3, 4}, color::red, {5, 6, 7}};
  EXPECT_EQ(encode(px).size(), sizeof(pixel));
  EXPECT_EQ(encode(px), bytes_of(px));
  const std::array<int, 3> a{1, 2, 3};
  EXPECT_EQ(encode(a), bytes_of(a));
}

TEST(codec, vector_of_bitwise_aggregates_encodes_as_length_and_one_block) {
  const std::vector<point> v{{1, 2}, {3, 4}, {-5, -6}};
  const std::string e = encode(v);
  ASSERT_EQ(e.size(), 8 + v.size() * sizeof(point));
  EXPECT_EQ(length_prefix(e), v.size());
  EXPECT_EQ(std::memcmp(e.data() + 8, v.data(), v.size() * sizeof(point)), 0);
  EXPECT_EQ(round_trip(v), v);

  const std::vector<color> colors{color::red, color::blue};
  EXPECT_EQ(encode(colors).size(), 8 + colors.size());
  EXPECT_EQ(round_trip(colors), colors);
}

TEST(codec, non_bitwise_aggregate_is_encoded_field_by_field) {
  // flagged has 3 padding bytes; field by field it is 4 + 1 bytes.
  EXPECT_EQ(encode(flagged{1, true}).size(), sizeof(std::int32_t) + 1);
}

// --- malformed input -------------------------------------------------------------------

TEST(codec, every_truncation_of_a_nested_record_is_a_decode_error) {
  const std::string e = encode(sample_outer());
  ASSERT_GT(e.size(), 100u);
  for (std::size_t n = 0; n < e.size(); ++n) {
    SCOPED_TRACE(n);
    const std::string what = decode_failure<outer>(std::string_view(e).substr(0, n));
    EXPECT_TRUE(contains(what, "truncated") || contains(what, "length exceeds")) << what;
  }
  EXPECT_EQ(decode<outer>(e), sample_outer());
}

TEST(codec, every_truncation_of_a_byte_buffer_is_a_decode_error) {
  const std::string e = encode(std::vector<std::byte>(16, std::byte{1}));
  for (std::size_t n = 0; n < e.size(); ++n) {
    SCOPED_TRACE(n);
    decode_failure<std::vector<std::byte>>(std::string_view(e).substr(0, n));
  }
}

TEST(codec, trailing_bytes_are_a_decode_error) {
  std::string e = encode(sample_outer()) + "x";
  EXPECT_TRUE(contains(decode_failure<outer>(e), "trailing bytes"));
  EXPECT_TRUE(contains(decode_failure<std::string>(encode(std::string("abc")) + "zz"),
                       "trailing bytes (2 bytes after the value)"));
  EXPECT_TRUE(contains(decode_failure<std::vector<point>>(encode(std::vector<point>{{1, 2}}) + "!"),
                       "trailing bytes"));
}

TEST(codec, wrong_size_for_a_bitwise_type_is_a_decode_error) {
  EXPECT_TRUE(contains(decode_failure<std::int32_t>("abc"), "wrong size"));
  EXPECT_TRUE(contains(decode_failure<std::int32_t>("abcde"), "wrong size"));
  EXPECT_TRUE(contains(decode_failure<point>(""), "wrong size"));
  EXPECT_TRUE(contains(decode_failure<point>(std::string(sizeof(point) + 1, '\0')), "wrong size"));
  EXPECT_TRUE(contains(decode_failure<std::array<int, 3>>(std::string(8, '\0')), "wrong size"));
}

// An allocator that records the largest request, to see that a corrupt length allocates
// nothing for it.
inline std::size_t largest_allocation = 0;

template <typename T>
struct tracking_allocator {
  using value_type = T;
  tracking_allocator() = default;
  template <typename U>
  tracking_allocator(const tracking_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    largest_allocation = std::max(largest_allocation, n * sizeof(T));
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept { std::allocator<T>().deallocate(p, n); }
  template <typename U>
  bool operator==(const tracking_allocator<U>&) const noexcept {
    return true;
  }
};

template <typename Vector>
std::string decode_failure_allocating_nothing(std::string_view bytes) {
  largest_allocation = 0;
  std::string what = decode_failure<Vector>(bytes);
  EXPECT_EQ(largest_allocation, 0u) << what;
  return what;
}

TEST(codec, corrupt_length_is_a_decode_error_without_allocating_for_it) {
  for (std::uint64_t huge : {std::uint64_t{1} << 62, std::uint64_t{1} << 40, std::uint64_t{17},
                             std::numeric_limits<std::uint64_t>::max()}) {
    SCOPED_TRACE(huge);
    const std::string prefix = bytes_of(huge);
    EXPECT_TRUE(contains(decode_failure<std::string>(prefix + "0123456789"), "length exceeds"));
    EXPECT_TRUE(contains(decode_failure<std::vector<std::string>>(prefix + "0123456789"),
                         "length exceeds"));
    decode_failure<std::map<std::string, int>>(prefix + "0123456789");
    decode_failure<std::unordered_set<int>>(prefix + "0123456789");
    decode_failure<std::deque<std::string>>(prefix + "0123456789");
    decode_failure<std::list<int>>(prefix + "0123456789");
    decode_failure_allocating_nothing<std::vector<std::int64_t, tracking_allocator<std::int64_t>>>(
        prefix + "0123456789");
    decode_failure_allocating_nothing<std::vector<point, tracking_allocator<point>>>(prefix +
                                                                                     "0123456789");
    decode_failure_allocating_nothing<std::vector<std::byte, tracking_allocator<std::byte>>>(
        prefix + "0123456789");
  }
  // Exactly one element more than the bytes left hold.
  const std::string one_too_many = bytes_of(std::uint64_t{2}) + bytes_of(point{1, 2});
  EXPECT_TRUE(
      contains(decode_failure_allocating_nothing<std::vector<point, tracking_allocator<point>>>(
                   one_too_many),
               "length exceeds"));
}

TEST(codec, invalid_bool_is_a_decode_error) {
  EXPECT_TRUE(contains(decode_failure<bool>("\x02"), "invalid bool"));
  EXPECT_TRUE(contains(decode_failure<bool>("\xff"), "invalid bool"));
  EXPECT_EQ(decode<bool>(std::string(1, '\1')), true);
  EXPECT_EQ(decode<bool>(std::string(1, '\0')), false);

  std::string e = encode(flagged{1, true});
  e.back() = 2;
  EXPECT_TRUE(contains(decode_failure<flagged>(e), "invalid bool"));

  e = encode(std::vector<bool>{true, false});
  e.back() = 7;
  EXPECT_TRUE(contains(decode_failure<std::vector<bool>>(e), "invalid bool"));

  e = encode(std::array<bool, 2>{true, true});
  e.back() = 5;
  EXPECT_TRUE(contains(decode_failure<std::array<bool, 2>>(e), "invalid bool"));

  e = encode(std::optional<int>{});
  e[0] = 3;  // the "empty" flag
  EXPECT_TRUE(contains(decode_failure<std::optional<int>>(e), "invalid bool"));
}

TEST(codec, variant_index_out_of_range_is_a_decode_error) {
  using v = std::variant<int, std::string>;
  const std::string payload = encode(std::int32_t{5});
  for (std::int32_t index : {2, 3, 1000, std::numeric_limits<std::int32_t>::max(), -1,
                             std::numeric_limits<std::int32_t>::min()}) {
    SCOPED_TRACE(index);
    EXPECT_TRUE(contains(decode_failure<v>(bytes_of(index) + payload), "variant"));
  }
  EXPECT_EQ(decode<v>(bytes_of(std::int32_t{0}) + payload), v(5));
}

TEST(codec, decode_error_is_a_system_error_with_the_malformed_message_code) {
  try {
    (void)decode<std::string>("xy");
    ADD_FAILURE() << "no exception";
  } catch (const boost::system::system_error& e) {
    EXPECT_TRUE(e.code() == coproc::errc::malformed_message);
    EXPECT_EQ(e.code(), coproc::make_error_code(coproc::errc::malformed_message));
    EXPECT_TRUE(contains(e.what(), "malformed message")) << e.what();
    EXPECT_TRUE(contains(e.what(), "truncated (8 bytes needed, 2 left)")) << e.what();
  }
}

// --- exceptions ------------------------------------------------------------------------

std::exception_ptr round_trip_exception(std::exception_ptr e) {
  return coproc::decode_exception(coproc::encode_exception(std::move(e)));
}

const std::type_info& dynamic_type(std::exception_ptr e) {
  try {
    std::rethrow_exception(std::move(e));
  } catch (const std::exception& x) {
    return typeid(x);
  } catch (...) {
    return typeid(void);
  }
}

// Rethrows `e` and returns it caught as E, or nullopt (with a failure) if it is not an E.
template <typename E>
std::optional<E> caught_as(std::exception_ptr e) {
  try {
    std::rethrow_exception(std::move(e));
  } catch (const E& x) {
    return x;
  } catch (const std::exception& x) {
    ADD_FAILURE() << "caught " << typeid(x).name() << ": " << x.what();
  } catch (...) {
    ADD_FAILURE() << "caught a non-std exception";
  }
  return std::nullopt;
}

std::string what_of(std::exception_ptr e) {
  try {
    std::rethrow_exception(std::move(e));
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "<not a std::exception>";
  }
}

template <typename F>
std::exception_ptr thrown_by(F&& f) {
  try {
    f();
  } catch (...) {
    return std::current_exception();
  }
  ADD_FAILURE() << "nothing thrown";
  return {};
}

TEST(codec, every_builtin_standard_exception_arrives_as_its_own_type_with_its_message) {
  namespace fs = std::filesystem;
  const auto ec = std::make_error_code(std::errc::permission_denied);
  const std::exception_ptr sent[] = {
      std::make_exception_ptr(std::exception()),
      std::make_exception_ptr(std::logic_error("logic")),
      std::make_exception_ptr(std::domain_error("domain")),
      std::make_exception_ptr(std::invalid_argument("invalid")),
      std::make_exception_ptr(std::length_error("length")),
      std::make_exception_ptr(std::out_of_range("range")),
      std::make_exception_ptr(std::runtime_error("runtime")),
      std::make_exception_ptr(std::range_error("range error")),
      std::make_exception_ptr(std::overflow_error("overflow")),
      std::make_exception_ptr(std::underflow_error("underflow")),
      std::make_exception_ptr(std::system_error(ec, "system")),
      std::make_exception_ptr(std::ios_base::failure("stream")),
      std::make_exception_ptr(std::future_error(std::future_errc::broken_promise)),
      std::make_exception_ptr(fs::filesystem_error("fs", fs::path("/a"), ec)),
      std::make_exception_ptr(std::bad_alloc()),
      std::make_exception_ptr(std::bad_array_new_length()),
      std::make_exception_ptr(std::bad_cast()),
      std::make_exception_ptr(std::bad_typeid()),
      std::make_exception_ptr(std::bad_exception()),
      std::make_exception_ptr(std::bad_variant_access()),
      std::make_exception_ptr(std::bad_optional_access()),
      std::make_exception_ptr(std::bad_function_call()),
      std::make_exception_ptr(std::bad_weak_ptr()),
  };
  for (const auto& e : sent) {
    SCOPED_TRACE(dynamic_type(e).name());
    const auto back = round_trip_exception(e);
    EXPECT_TRUE(dynamic_type(back) == dynamic_type(e)) << dynamic_type(back).name();
    EXPECT_EQ(what_of(back), what_of(e));
  }
}

TEST(codec, standard_exceptions_thrown_by_the_library_keep_type_and_message) {
  const auto range = thrown_by([] { (void)std::vector<int>().at(3); });
  EXPECT_TRUE(dynamic_type(round_trip_exception(range)) == typeid(std::out_of_range));
  EXPECT_EQ(what_of(round_trip_exception(range)), what_of(range));

  const auto length = thrown_by([] { std::string().reserve(std::string().max_size() + 1); });
  EXPECT_TRUE(dynamic_type(round_trip_exception(length)) == typeid(std::length_error));
  EXPECT_EQ(what_of(round_trip_exception(length)), what_of(length));

  const auto optional = thrown_by([] { (void)std::optional<int>().value(); });
  EXPECT_TRUE(dynamic_type(round_trip_exception(optional)) == typeid(std::bad_optional_access));

  // libstdc++ throws its own subclass of std::ios_base::failure: it arrives as the standard type.
  const auto stream = thrown_by([] {
    std::ifstream f;
    f.exceptions(std::ios::failbit);
    f.open("/nonexistent/coproc-codec-test");
  });
  const auto failure = caught_as<std::ios_base::failure>(round_trip_exception(stream));
  ASSERT_TRUE(failure);
  EXPECT_TRUE(dynamic_type(round_trip_exception(stream)) == typeid(std::ios_base::failure));
  EXPECT_EQ(std::string(failure->what()), what_of(stream));
  EXPECT_EQ(failure->code(), std::io_errc::stream);
}

TEST(codec, system_error_keeps_code_category_and_message) {
  struct case_t {
    std::system_error sent;
    const std::error_category* category;
  };
  const case_t cases[] = {
      {std::system_error(ENOENT, std::generic_category(), "open config"), &std::generic_category()},
      {std::system_error(std::error_code(EACCES, std::system_category()), "bind"),
       &std::system_category()},
      {std::system_error(std::error_code(EACCES, std::system_category()), std::string("s")),
       &std::system_category()},
      {std::system_error(std::error_code(EPIPE, std::system_category())), &std::system_category()},
      {std::system_error(std::make_error_code(std::errc::timed_out)), &std::generic_category()},
      {std::system_error(std::make_error_code(std::errc::timed_out), ""), &std::generic_category()},
      {std::system_error(std::error_code(0, std::generic_category()), "ok?"),
       &std::generic_category()},
      // A what_arg that itself ends like the message.
      {std::system_error(std::make_error_code(std::errc::timed_out), "x: Connection timed out"),
       &std::generic_category()},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.sent.what());
    const auto back = round_trip_exception(std::make_exception_ptr(c.sent));
    EXPECT_TRUE(dynamic_type(back) == typeid(std::system_error)) << dynamic_type(back).name();
    const auto e = caught_as<std::system_error>(back);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->code().value(), c.sent.code().value());
    EXPECT_EQ(&e->code().category(), c.category);
    EXPECT_EQ(e->code(), c.sent.code());
    EXPECT_STREQ(e->what(), c.sent.what());
  }
}

class private_category_t : public std::error_category {
 public:
  const char* name() const noexcept override { return "codec-test"; }
  std::string message(int) const override { return "codec test error"; }
};
const private_category_t private_category{};

TEST(codec, system_error_of_an_unknown_category_arrives_as_remote_error) {
  const std::system_error sent(std::error_code(3, private_category), "custom");
  const auto e =
      caught_as<coproc::remote_error>(round_trip_exception(std::make_exception_ptr(sent)));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->type_name(), "std::system_error");
  EXPECT_STREQ(e->what(), sent.what());
}

TEST(codec, boost_system_error_keeps_code_category_and_message) {
  const std::vector<boost::system::system_error> sent = {
      boost::system::system_error(coproc::make_error_code(coproc::errc::worker_died), "task 7"),
      boost::system::system_error(
          boost::system::error_code(ECONNRESET, boost::system::system_category()), "read"),
      boost::system::system_error(
          boost::system::error_code(ENOENT, boost::system::generic_category())),
  };
  for (const auto& s : sent) {
    const auto e =
        caught_as<boost::system::system_error>(round_trip_exception(std::make_exception_ptr(s)));
    ASSERT_TRUE(e) << s.what();
    EXPECT_EQ(e->code(), s.code());
    EXPECT_STREQ(e->code().category().name(), s.code().category().name());
    EXPECT_STREQ(e->what(), s.what());
  }
}

TEST(codec, boost_system_error_of_an_unknown_category_arrives_as_remote_error) {
  class other_category_t : public boost::system::error_category {
   public:
    const char* name() const noexcept override { return "codec-test-boost"; }
    std::string message(int) const override { return "codec test boost error"; }
  };
  static const other_category_t other;
  const boost::system::system_error sent(boost::system::error_code(5, other), "custom");
  const auto e =
      caught_as<coproc::remote_error>(round_trip_exception(std::make_exception_ptr(sent)));
  ASSERT_TRUE(e);
  EXPECT_STREQ(e->what(), sent.what());
}

TEST(codec, filesystem_error_keeps_code_paths_and_message) {
  namespace fs = std::filesystem;
  const auto ec = std::make_error_code(std::errc::no_such_file_or_directory);
  const fs::filesystem_error sent[] = {
      fs::filesystem_error("copy", "/from/a", "/to/b", ec),
      fs::filesystem_error("remove", "/only/one", ec),
      fs::filesystem_error("no paths", ec),
      fs::filesystem_error("", "/a", ec),
      fs::filesystem_error("rename", "", "/second", ec),
      fs::filesystem_error("rename", "/first", "", ec),
      fs::filesystem_error("stat", "", ec),
      fs::filesystem_error("copy", "/with [brackets]", "/and ]",
                           std::error_code(EIO, std::system_category())),
  };
  for (const auto& s : sent) {
    SCOPED_TRACE(s.what());
    const auto back = round_trip_exception(std::make_exception_ptr(s));
    EXPECT_TRUE(dynamic_type(back) == typeid(fs::filesystem_error)) << dynamic_type(back).name();
    const auto e = caught_as<fs::filesystem_error>(back);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->code(), s.code());
    EXPECT_EQ(e->path1(), s.path1());
    EXPECT_EQ(e->path2(), s.path2());
    EXPECT_STREQ(e->what(), s.what());
  }
}

TEST(codec, filesystem_error_thrown_by_the_library_round_trips) {
  const auto sent =
      thrown_by([] { (void)std::filesystem::file_size("/nonexistent/coproc-codec-test"); });
  const auto e = caught_as<std::filesystem::filesystem_error>(round_trip_exception(sent));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), std::errc::no_such_file_or_directory);
  EXPECT_EQ(e->path1(), "/nonexistent/coproc-codec-test");
  EXPECT_EQ(std::string(e->what()), what_of(sent));
}

TEST(codec, future_error_keeps_its_code) {
  for (auto c : {std::future_errc::broken_promise, std::future_errc::no_state,
                 std::future_errc::promise_already_satisfied}) {
    const auto e = caught_as<std::future_error>(
        round_trip_exception(std::make_exception_ptr(std::future_error(c))));
    ASSERT_TRUE(e);
    EXPECT_EQ(e->code(), c);
  }
}

TEST(codec, unregistered_user_exception_arrives_as_remote_error_with_its_name) {
  const auto e = caught_as<coproc::remote_error>(round_trip_exception(
      std::make_exception_ptr(codec_test_app::parse_error("line 3: bad token"))));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->type_name(), "codec_test_app::parse_error");
  EXPECT_STREQ(e->what(), "line 3: bad token");
}

TEST(codec, unregistered_local_exception_type_name_contains_its_demangled_name) {
  struct local_failure : std::logic_error {
    using std::logic_error::logic_error;
  };
  const auto e = caught_as<coproc::remote_error>(
      round_trip_exception(std::make_exception_ptr(local_failure("local"))));
  ASSERT_TRUE(e);
  EXPECT_TRUE(contains(e->type_name(), "local_failure")) << e->type_name();
  EXPECT_STREQ(e->what(), "local");
}

TEST(codec, non_std_exception_arrives_as_remote_error_named_unknown_exception) {
  for (const auto& sent : {std::make_exception_ptr(42), std::make_exception_ptr(std::string("s")),
                           std::make_exception_ptr("text")}) {
    const auto e = caught_as<coproc::remote_error>(round_trip_exception(sent));
    ASSERT_TRUE(e);
    EXPECT_EQ(e->type_name(), "unknown exception");
  }
}

TEST(codec, registered_exception_arrives_as_its_own_type) {
  const auto sent = std::make_exception_ptr(codec_test_app::registered_error("registered"));
  EXPECT_TRUE(dynamic_type(round_trip_exception(sent)) == typeid(coproc::remote_error));
  coproc::register_exception<codec_test_app::registered_error>();
  const auto back = round_trip_exception(sent);
  EXPECT_TRUE(dynamic_type(back) == typeid(codec_test_app::registered_error))
      << dynamic_type(back).name();
  EXPECT_EQ(what_of(back), "registered");
}

TEST(codec, registered_exception_with_a_factory_is_built_by_it) {
  coproc::register_exception<codec_test_app::coded_error>([](const std::string& message) {
    return std::make_exception_ptr(codec_test_app::coded_error(7, message));
  });
  const auto e = caught_as<codec_test_app::coded_error>(
      round_trip_exception(std::make_exception_ptr(codec_test_app::coded_error(1, "coded"))));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, 7);  // what the factory made: only the message crosses
  EXPECT_STREQ(e->what(), "coded");
}

TEST(codec, registering_again_replaces_the_factory) {
  coproc::register_exception<codec_test_app::replaced_error>([](const std::string&) {
    return std::make_exception_ptr(std::runtime_error("first factory"));
  });
  coproc::register_exception<codec_test_app::replaced_error>();
  const auto back =
      round_trip_exception(std::make_exception_ptr(codec_test_app::replaced_error("second")));
  EXPECT_TRUE(dynamic_type(back) == typeid(codec_test_app::replaced_error));
  EXPECT_EQ(what_of(back), "second");
}

TEST(codec, factory_that_throws_delivers_what_it_threw) {
  coproc::register_exception<codec_test_app::throwing_factory_error>(
      [](const std::string&) -> std::exception_ptr { throw std::invalid_argument("factory"); });
  const auto back =
      round_trip_exception(std::make_exception_ptr(codec_test_app::throwing_factory_error("x")));
  EXPECT_TRUE(dynamic_type(back) == typeid(std::invalid_argument));
  EXPECT_EQ(what_of(back), "factory");
}

TEST(codec, remote_error_round_trips_keeping_its_type_name) {
  const coproc::remote_error sent("other::error_type", "from afar");
  const auto e =
      caught_as<coproc::remote_error>(round_trip_exception(std::make_exception_ptr(sent)));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->type_name(), "other::error_type");
  EXPECT_STREQ(e->what(), "from afar");

  // Two hops: an unregistered type forwarded again keeps its original name.
  const auto twice = caught_as<coproc::remote_error>(round_trip_exception(
      round_trip_exception(std::make_exception_ptr(codec_test_app::parse_error("hop")))));
  ASSERT_TRUE(twice);
  EXPECT_EQ(twice->type_name(), "codec_test_app::parse_error");
  EXPECT_STREQ(twice->what(), "hop");
}

TEST(codec, decode_exception_of_garbage_is_a_decode_error) {
  EXPECT_THROW((void)coproc::decode_exception(""), decode_error);
  EXPECT_THROW((void)coproc::decode_exception("garbage"), decode_error);
  EXPECT_THROW((void)coproc::decode_exception(std::string(64, '\xff')), decode_error);
  const std::string valid =
      coproc::encode_exception(std::make_exception_ptr(std::runtime_error("r")));
  EXPECT_THROW((void)coproc::decode_exception(valid + "x"), decode_error);
  for (std::size_t n = 0; n < valid.size(); ++n) {
    SCOPED_TRACE(n);
    EXPECT_THROW((void)coproc::decode_exception(std::string_view(valid).substr(0, n)),
                 decode_error);
  }
}

}  // namespace
