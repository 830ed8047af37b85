// Values and exceptions across a process boundary.
//
// `encode` turns a value into bytes and `decode` turns them back, in the same program (a forked
// child, or the program re-executed by the spawn start method). Supported without user code:
// arithmetic types, enums, std::string, vector, deque, list, array, map, unordered_map, set,
// unordered_set, optional, variant, tuple, pair, chrono durations and time points, byte
// buffers, aggregates whose fields are encodable (through Boost.PFR, which cannot reflect C array
// members: use std::array), and every type cereal can serialize (a `serialize` member, or
// `save`/`load` members). The encoding is cereal's data model written by a coproc archive
// straight into a std::string: no iostreams, and trivially copyable values (numbers, scoped
// enums, arrays and aggregates of them) are copied as one block.
//
// The encoding is not portable between machines of different endianness or between programs
// built differently: both ends run the same binary.
#pragma once

#include <coproc/config.hpp>
#include <coproc/error.hpp>

#include <boost/pfr/core.hpp>
#include <boost/system/system_error.hpp>
#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/common.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include <array>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace coproc {

/// Thrown by `decode` (and by receives on a connection) when bytes are not a valid encoding:
/// truncated, trailing bytes, an impossible length, an invalid value (a bool that is not 0 or
/// 1, a variant index out of range). `code()` is `errc::malformed_message`.
class decode_error : public boost::system::system_error {
 public:
  explicit decode_error(const std::string& detail);
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

namespace detail {

[[noreturn]] void throw_decode_error(const char* what, std::size_t need, std::size_t left);

template <typename T>
struct is_std_array : std::false_type {};
template <typename T, std::size_t N>
struct is_std_array<std::array<T, N>> : std::true_type {};

class output_archive;
class input_archive;

// A user type that brings its own cereal functions is serialized by them, never field by field.
// Through cereal::access, so that private members with `friend class cereal::access` count.
template <typename T>
concept has_member_serialization = requires(T& t, output_archive& a) {
  cereal::access::member_serialize(a, t);
}
|| requires(const T& t, output_archive& a) { cereal::access::member_save(a, t); }
|| requires(T& t, output_archive& a, std::uint32_t v) { cereal::access::member_serialize(a, t, v); }
|| requires(const T& t, output_archive& a, std::uint32_t v) {
  cereal::access::member_save(a, t, v);
};

// A plain aggregate, encoded field by field through Boost.PFR.
template <typename T>
concept reflectable =
    std::is_class_v<T> && std::is_aggregate_v<T> && !std::is_union_v<T> &&
    !is_std_array<T>::value && !std::is_same_v<T, std::monostate> && !has_member_serialization<T>;

template <typename T>
consteval bool bitwise_check();

template <typename T, std::size_t... I>
consteval bool all_fields_bitwise(std::index_sequence<I...>) {
  return (bitwise_check<boost::pfr::tuple_element_t<I, T>>() && ...);
}

// Values whose every bit pattern of the right size is a valid value: copied as one block.
// Not bool (only 0 and 1 are valid) and not unscoped enums (their range can be narrower than
// the underlying type).
template <typename T>
consteval bool bitwise_check() {
  if constexpr (std::is_same_v<T, bool>) {
    return false;
  } else if constexpr (std::is_arithmetic_v<T>) {
    return true;
  } else if constexpr (std::is_enum_v<T>) {
    return !std::is_convertible_v<T, std::underlying_type_t<T>>;
  } else if constexpr (std::is_array_v<T>) {
    return std::extent_v<T> > 0 && bitwise_check<std::remove_extent_t<T>>();
  } else if constexpr (is_std_array<T>::value) {
    return bitwise_check<typename T::value_type>();
  } else if constexpr (reflectable<T>) {
    if constexpr (std::is_trivially_copyable_v<T> && !std::is_empty_v<T>)
      return all_fields_bitwise<T>(std::make_index_sequence<boost::pfr::tuple_size_v<T>>{});
    else
      return false;
  } else {
    return false;
  }
}

}  // namespace detail

/// A type copied as one block of bytes (see `encodable`).
template <typename T>
concept bitwise_encodable = detail::bitwise_check<std::remove_cv_t<T>>();

namespace detail {

template <typename T>
consteval bool encodable_check();

template <typename T, std::size_t... I>
consteval bool all_fields_encodable(std::index_sequence<I...>) {
  return (encodable_check<boost::pfr::tuple_element_t<I, T>>() && ...);
}
template <typename Tuple, std::size_t... I>
consteval bool all_elements_encodable(std::index_sequence<I...>) {
  return (encodable_check<std::tuple_element_t<I, Tuple>>() && ...);
}
template <typename Variant, std::size_t... I>
consteval bool all_alternatives_encodable(std::index_sequence<I...>) {
  return (encodable_check<std::variant_alternative_t<I, Variant>>() && ...);
}

template <typename T>
struct is_variant : std::false_type {};
template <typename... A>
struct is_variant<std::variant<A...>> : std::true_type {};
template <typename T>
struct is_optional : std::false_type {};
template <typename T>
struct is_optional<std::optional<T>> : std::true_type {};
template <typename T>
struct is_tuple_like : std::false_type {};
template <typename... A>
struct is_tuple_like<std::tuple<A...>> : std::true_type {};
template <typename A, typename B>
struct is_tuple_like<std::pair<A, B>> : std::true_type {};
template <typename T>
struct is_duration : std::false_type {};
template <typename R, typename P>
struct is_duration<std::chrono::duration<R, P>> : std::true_type {};
template <typename T>
struct is_time_point : std::false_type {};
template <typename C, typename D>
struct is_time_point<std::chrono::time_point<C, D>> : std::true_type {};

template <typename T>
concept std_container = requires {
  typename T::value_type;
}
&&(requires { typename T::key_type; } ||
   std::is_same_v<T, std::vector<typename T::value_type, typename T::allocator_type>> ||
   std::is_same_v<T, std::deque<typename T::value_type, typename T::allocator_type>> ||
   std::is_same_v<T, std::list<typename T::value_type, typename T::allocator_type>> ||
   std::is_same_v<T, std::basic_string<typename T::value_type>>);

template <typename T>
concept cereal_serializable = cereal::traits::is_output_serializable<T, output_archive>::value &&
    cereal::traits::is_input_serializable<T, input_archive>::value;

// Walks into the standard containers so that `std::vector<std::thread>` is rejected by the
// concept (a readable error) rather than deep inside cereal.
template <typename T>
consteval bool encodable_check() {
  if constexpr (std::is_reference_v<T> || std::is_pointer_v<T> || std::is_const_v<T> ||
                std::is_volatile_v<T>) {
    return false;
  } else if constexpr (!std::is_default_constructible_v<T>) {
    return false;  // decoding default-constructs every value, nested ones included
  } else if constexpr (std::is_arithmetic_v<T> || std::is_enum_v<T>) {
    return true;
  } else if constexpr (std::is_array_v<T>) {
    return std::extent_v<T> > 0 && encodable_check<std::remove_extent_t<T>>();
  } else if constexpr (is_std_array<T>::value || is_optional<T>::value) {
    return encodable_check<typename T::value_type>();
  } else if constexpr (is_variant<T>::value) {
    return all_alternatives_encodable<T>(std::make_index_sequence<std::variant_size_v<T>>{}) &&
           std::is_default_constructible_v<std::variant_alternative_t<0, T>>;
  } else if constexpr (is_tuple_like<T>::value) {
    return all_elements_encodable<T>(std::make_index_sequence<std::tuple_size_v<T>>{});
  } else if constexpr (is_duration<T>::value || is_time_point<T>::value ||
                       std::is_same_v<T, std::monostate>) {
    return true;
  } else if constexpr (std_container<T>) {
    if constexpr (requires { typename T::mapped_type; })
      return encodable_check<std::remove_const_t<typename T::key_type>>() &&
             encodable_check<typename T::mapped_type>();
    else
      return encodable_check<typename T::value_type>();
  } else if constexpr (reflectable<T>) {
    return all_fields_encodable<T>(std::make_index_sequence<boost::pfr::tuple_size_v<T>>{});
  } else if constexpr (std::is_class_v<T>) {
    return has_member_serialization<T> && cereal_serializable<T>;
  } else {
    return false;
  }
}

}  // namespace detail

/// A type that can cross a process boundary: `encode` and `decode` accept it. Decoding
/// default-constructs the value first, so encodable types are default constructible. A type
/// that is not encodable is rejected at compile time by this concept, naming the type.
template <typename T>
concept encodable = detail::encodable_check<T>() && std::default_initializable<T>;

namespace detail {

// cereal archive writing straight into a std::string.
class output_archive
    : public cereal::OutputArchive<output_archive, cereal::AllowEmptyClassElision> {
 public:
  explicit output_archive(std::string& out) : OutputArchive(this), out_(out) {}
  void save_binary(const void* data, std::size_t n) {
    out_.append(static_cast<const char*>(data), n);
  }

 private:
  std::string& out_;
};

// cereal archive reading from a byte range; every read is bounds-checked, every length is
// checked against the bytes left before anything is allocated for it.
class input_archive : public cereal::InputArchive<input_archive, cereal::AllowEmptyClassElision> {
 public:
  explicit input_archive(std::string_view in)
      : InputArchive(this), pos_(in.data()), end_(in.data() + in.size()) {}
  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - pos_); }
  void load_binary(void* data, std::size_t n) {
    if (n > remaining()) throw_decode_error("truncated", n, remaining());
    if (n) std::memcpy(data, pos_, n);
    pos_ += n;
  }
  void check_length(std::uint64_t count, std::size_t element_size) const {
    if (element_size == 0) element_size = 1;
    if (count > remaining() / element_size)
      throw_decode_error("length exceeds the bytes left", count * element_size, remaining());
  }

 private:
  const char* pos_;
  const char* end_;
};

template <typename T>
requires std::is_arithmetic_v<T>
void save(output_archive& ar, const T& v) { ar.save_binary(&v, sizeof v); }

template <typename T>
requires std::is_arithmetic_v<T>
void load(input_archive& ar, T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    unsigned char b;
    ar.load_binary(&b, 1);
    if (b > 1) throw_decode_error("invalid bool", 0, 0);
    v = b != 0;
  } else {
    ar.load_binary(&v, sizeof v);
  }
}

template <typename T>
void serialize(output_archive& ar, cereal::NameValuePair<T>& nvp) {
  ar(nvp.value);
}
template <typename T>
void serialize(input_archive& ar, cereal::NameValuePair<T>& nvp) {
  ar(nvp.value);
}
template <typename T>
void serialize(output_archive& ar, cereal::SizeTag<T>& tag) {
  ar(tag.size);
}
template <typename T>
void serialize(input_archive& ar, cereal::SizeTag<T>& tag) {
  ar(tag.size);
  ar.check_length(static_cast<std::uint64_t>(tag.size), 1);
}
template <typename T>
void save(output_archive& ar, const cereal::BinaryData<T>& bd) {
  ar.save_binary(bd.data, static_cast<std::size_t>(bd.size));
}
template <typename T>
void load(input_archive& ar, cereal::BinaryData<T>& bd) {
  ar.load_binary(bd.data, static_cast<std::size_t>(bd.size));
}

// Vectors and arrays of block-copyable elements that cereal would walk one by one
// (std::byte, scoped enums, aggregates): one block.
template <typename T, typename A>
requires(bitwise_encodable<T> && !std::is_arithmetic_v<T>) void save(output_archive& ar,
                                                                     const std::vector<T, A>& v) {
  ar(cereal::make_size_tag(static_cast<cereal::size_type>(v.size())));
  ar.save_binary(v.data(), v.size() * sizeof(T));
}
template <typename T, typename A>
requires(bitwise_encodable<T> && !std::is_arithmetic_v<T>) void load(input_archive& ar,
                                                                     std::vector<T, A>& v) {
  cereal::size_type n;
  ar(cereal::make_size_tag(n));
  ar.check_length(n, sizeof(T));
  v.resize(static_cast<std::size_t>(n));
  ar.load_binary(v.data(), v.size() * sizeof(T));
}
template <typename T, std::size_t N>
requires(bitwise_encodable<T> && !std::is_arithmetic_v<T>) void save(output_archive& ar,
                                                                     const std::array<T, N>& v) {
  ar.save_binary(v.data(), sizeof v);
}
template <typename T, std::size_t N>
requires(bitwise_encodable<T> && !std::is_arithmetic_v<T>) void load(input_archive& ar,
                                                                     std::array<T, N>& v) {
  ar.load_binary(v.data(), sizeof v);
}

// cereal loads std::array of arithmetic types as one block, bools included: check each one.
template <std::size_t N>
void load(input_archive& ar, std::array<bool, N>& v) {
  for (bool& b : v) ar(b);
}

template <typename T>
requires reflectable<T>
void serialize(output_archive& ar, T& v) {
  if constexpr (bitwise_encodable<T>)
    ar.save_binary(&v, sizeof v);
  else
    boost::pfr::for_each_field(v, [&ar](auto& field) { ar(field); });
}
template <typename T>
requires reflectable<T>
void serialize(input_archive& ar, T& v) {
  if constexpr (bitwise_encodable<T>)
    ar.load_binary(&v, sizeof v);
  else
    boost::pfr::for_each_field(v, [&ar](auto& field) { ar(field); });
}

[[noreturn]] void rethrow_as_decode_error(const std::exception& e);

}  // namespace detail

/// Appends the encoding of `value` to `out`. Throws what allocation throws.
template <typename T>
void encode_to(std::string& out, const T& value) {
  static_assert(encodable<T>,
                "coproc: this type cannot cross a process boundary (see coproc::encodable "
                "in <coproc/codec.hpp>)");
  if constexpr (bitwise_encodable<T>) {
    out.append(reinterpret_cast<const char*>(&value), sizeof value);
  } else {
    detail::output_archive ar(out);
    ar(value);
  }
}

/// The encoding of `value`.
template <typename T>
std::string encode(const T& value) {
  std::string out;
  encode_to(out, value);
  return out;
}

/// Decodes exactly the bytes of `in` into `out`. Throws `decode_error` if they are not the
/// encoding of a T (truncated, trailing bytes, impossible length or value); `out` is then in a
/// valid but unspecified state.
template <typename T>
void decode_into(std::string_view in, T& out) {
  static_assert(encodable<T>,
                "coproc: this type cannot cross a process boundary (see coproc::encodable "
                "in <coproc/codec.hpp>)");
  if constexpr (bitwise_encodable<T>) {
    if (in.size() != sizeof(T)) detail::throw_decode_error("wrong size", sizeof(T), in.size());
    std::memcpy(&out, in.data(), sizeof(T));
  } else {
    detail::input_archive ar(in);
    try {
      ar(out);
    } catch (const decode_error&) {
      throw;
    } catch (const cereal::Exception& e) {
      detail::rethrow_as_decode_error(e);
    }
    if (ar.remaining() != 0) detail::throw_decode_error("trailing bytes", 0, ar.remaining());
  }
}

/// Decodes a T from exactly the bytes of `in` (see `decode_into`).
template <typename T>
T decode(std::string_view in) {
  T v{};
  decode_into(in, v);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Exceptions

/// An exception from another process whose type is not registered here: it carries the
/// original type's name and message.
class remote_error : public std::runtime_error {
 public:
  remote_error(std::string type_name, const std::string& message);
  /// The original exception's type, demangled ("my::parse_error"), or "unknown exception"
  /// for a value that was not derived from std::exception.
  const std::string& type_name() const noexcept { return type_name_; }

 private:
  std::string type_name_;
};

/// Builds an exception of a registered type from its message.
using exception_factory = std::function<std::exception_ptr(const std::string& message)>;

namespace detail {
void register_exception_type(const std::type_info& type, exception_factory make);
}

/// Makes exceptions of type E arrive as E (with their `what()` as message) instead of as
/// `remote_error`. E must be constructible from a std::string. Register in every process
/// that decodes: before forking, or at start-up in a program used with the spawn start method.
/// Registering the same type again replaces the factory. Thread-safe.
template <typename E>
requires std::constructible_from<E, std::string>
void register_exception() {
  detail::register_exception_type(
      typeid(E), [](const std::string& message) { return std::make_exception_ptr(E(message)); });
}

/// As above, with a factory for types built differently.
template <typename E>
void register_exception(exception_factory make) {
  detail::register_exception_type(typeid(E), std::move(make));
}

/// The encoding of the exception held by `e` (type, message, and for std::system_error and
/// std::filesystem::filesystem_error the error code and paths).
std::string encode_exception(std::exception_ptr e);

/// The exception encoded by `encode_exception`: the same type for the standard exception
/// types and registered types; a `boost::system::system_error` (any subclass not registered,
/// coproc's own errors among them) as a `boost::system::system_error` with the same code,
/// category (coproc, system or generic) and `what()`; `remote_error` otherwise. Throws
/// `decode_error` on bytes that are not such an encoding.
std::exception_ptr decode_exception(std::string_view in);

}  // namespace coproc

CEREAL_SETUP_ARCHIVE_TRAITS(coproc::detail::input_archive, coproc::detail::output_archive)
