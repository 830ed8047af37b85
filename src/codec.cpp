#include <coproc/codec.hpp>

#include <coproc/error.hpp>

#include <cxxabi.h>
#include <filesystem>
#include <future>
#include <ios>
#include <memory>
#include <mutex>
#include <new>
#include <typeindex>

namespace coproc {

decode_error::decode_error(const std::string& detail)
    : boost::system::system_error(make_error_code(errc::malformed_message)),
      message_("malformed message: " + detail) {}

remote_error::remote_error(std::string type_name, const std::string& message)
    : std::runtime_error(message), type_name_(std::move(type_name)) {}

namespace detail {

void throw_decode_error(const char* what, std::size_t need, std::size_t left) {
  std::string m = what;
  if (need) m += " (" + std::to_string(need) + " bytes needed, " + std::to_string(left) + " left)";
  if (!need && left) m += " (" + std::to_string(left) + " bytes after the value)";
  throw decode_error(m);
}

void rethrow_as_decode_error(const std::exception& e) { throw decode_error(e.what()); }

}  // namespace detail

namespace {

std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> p(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                           std::free);
  return status == 0 && p ? std::string(p.get()) : std::string(mangled);
}

// What crosses the boundary for one exception.
struct exception_record {
  std::string key;        // typeid(E).name() of a known type; empty: arrives as remote_error
  std::string type_name;  // demangled, for remote_error
  std::string what;
  std::int32_t code = 0;  // system_error family
  std::string category;
  std::string path1, path2;   // filesystem_error
  bool boost_system = false;  // a boost::system::system_error (coproc's own errors among them)
};

// A boost::system::system_error rebuilt from its record: the same code, category and what().
class remote_system_error : public boost::system::system_error {
 public:
  remote_system_error(error_code ec, std::string what)
      : boost::system::system_error(ec), what_(std::move(what)) {}
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  std::string what_;
};

const boost::system::error_category* boost_category(const std::string& name) {
  if (name == coproc::category().name()) return &coproc::category();
  if (name == boost::system::system_category().name()) return &boost::system::system_category();
  if (name == boost::system::generic_category().name()) return &boost::system::generic_category();
  return nullptr;
}

// Rebuilt as a plain boost::system::system_error when the text is what one would print (so
// a copy of the base keeps the text), as remote_system_error otherwise.
std::exception_ptr make_boost_system_error(const exception_record& r,
                                           const boost::system::error_category& cat) {
  const error_code ec(r.code, cat);
  const std::string bare = boost::system::system_error(ec).what();
  if (r.what == bare) return std::make_exception_ptr(boost::system::system_error(ec));
  const std::string tail = ": " + bare;
  if (r.what.size() > tail.size() && r.what.ends_with(tail))
    return std::make_exception_ptr(
        boost::system::system_error(ec, r.what.substr(0, r.what.size() - tail.size())));
  return std::make_exception_ptr(remote_system_error(ec, r.what));
}

const std::error_category* std_category(const std::string& name) {
  if (name == std::generic_category().name()) return &std::generic_category();
  if (name == std::system_category().name()) return &std::system_category();
  if (name == std::iostream_category().name()) return &std::iostream_category();
  if (name == std::future_category().name()) return &std::future_category();
  return nullptr;
}

// The what_arg that, given to system_error's constructor with `ec`, reproduces `what`
// (libstdc++ appends ": " + ec.message()); nullopt: construct from the code alone.
std::optional<std::string> what_arg_for(const std::string& what, const std::error_code& ec) {
  const std::string suffix = ": " + ec.message();
  if (what == ec.message()) return std::nullopt;
  if (what.size() >= suffix.size() &&
      what.compare(what.size() - suffix.size(), suffix.size(), suffix) == 0)
    return what.substr(0, what.size() - suffix.size());
  return what;
}

using builder = std::exception_ptr (*)(const exception_record&);

template <typename E>
std::exception_ptr with_message(const exception_record& r) {
  return std::make_exception_ptr(E(r.what));
}
template <typename E>
std::exception_ptr without_message(const exception_record&) {
  return std::make_exception_ptr(E());
}

std::exception_ptr make_system_error(const exception_record& r) {
  const auto* cat = std_category(r.category);
  if (!cat) return std::make_exception_ptr(remote_error("std::system_error", r.what));
  const std::error_code ec(r.code, *cat);
  if (auto arg = what_arg_for(r.what, ec))
    return std::make_exception_ptr(std::system_error(ec, *arg));
  return std::make_exception_ptr(std::system_error(ec));
}

std::exception_ptr make_ios_failure(const exception_record& r) {
  const auto* cat = std_category(r.category);
  if (!cat) return std::make_exception_ptr(remote_error("std::ios_base::failure", r.what));
  const std::error_code ec(r.code, *cat);
  return std::make_exception_ptr(std::ios_base::failure(what_arg_for(r.what, ec).value_or(""), ec));
}

std::exception_ptr make_future_error(const exception_record& r) {
  if (r.category != std::future_category().name())
    return std::make_exception_ptr(remote_error("std::future_error", r.what));
  return std::make_exception_ptr(std::future_error(static_cast<std::future_errc>(r.code)));
}

std::exception_ptr make_filesystem_error(const exception_record& r) {
  namespace fs = std::filesystem;
  const auto* cat = std_category(r.category);
  if (!cat)
    return std::make_exception_ptr(remote_error("std::filesystem::filesystem_error", r.what));
  const std::error_code ec(r.code, *cat);
  // libstdc++ builds what() as "filesystem error: " + what_arg + ": " + message, then " [p1]"
  // when constructed with one path, " [p1] [p2]" with two (empty paths included).
  std::string arg = r.what;
  const std::string prefix = "filesystem error: ";
  if (arg.rfind(prefix, 0) == 0) arg.erase(0, prefix.size());
  const auto strip = [&arg](const std::string& s) {
    if (arg.size() < s.size() || arg.compare(arg.size() - s.size(), s.size(), s) != 0) return false;
    arg.resize(arg.size() - s.size());
    return true;
  };
  int paths = 0;
  if (strip(" [" + r.path1 + "] [" + r.path2 + "]"))
    paths = 2;
  else if (r.path2.empty() && strip(" [" + r.path1 + "]"))
    paths = 1;
  else if (!r.path2.empty())
    paths = 2;
  else if (!r.path1.empty())
    paths = 1;
  arg = what_arg_for(arg, ec).value_or("");
  if (paths == 2) return std::make_exception_ptr(fs::filesystem_error(arg, r.path1, r.path2, ec));
  if (paths == 1) return std::make_exception_ptr(fs::filesystem_error(arg, r.path1, ec));
  return std::make_exception_ptr(fs::filesystem_error(arg, ec));
}

struct builtin {
  const std::type_info& type;
  builder make;
};

const builtin builtins[] = {
    {typeid(std::exception), without_message<std::exception>},
    {typeid(std::logic_error), with_message<std::logic_error>},
    {typeid(std::domain_error), with_message<std::domain_error>},
    {typeid(std::invalid_argument), with_message<std::invalid_argument>},
    {typeid(std::length_error), with_message<std::length_error>},
    {typeid(std::out_of_range), with_message<std::out_of_range>},
    {typeid(std::runtime_error), with_message<std::runtime_error>},
    {typeid(std::range_error), with_message<std::range_error>},
    {typeid(std::overflow_error), with_message<std::overflow_error>},
    {typeid(std::underflow_error), with_message<std::underflow_error>},
    {typeid(std::system_error), make_system_error},
    {typeid(std::ios_base::failure), make_ios_failure},
    {typeid(std::future_error), make_future_error},
    {typeid(std::filesystem::filesystem_error), make_filesystem_error},
    {typeid(std::bad_alloc), without_message<std::bad_alloc>},
    {typeid(std::bad_array_new_length), without_message<std::bad_array_new_length>},
    {typeid(std::bad_cast), without_message<std::bad_cast>},
    {typeid(std::bad_typeid), without_message<std::bad_typeid>},
    {typeid(std::bad_exception), without_message<std::bad_exception>},
    {typeid(std::bad_variant_access), without_message<std::bad_variant_access>},
    {typeid(std::bad_optional_access), without_message<std::bad_optional_access>},
    {typeid(std::bad_function_call), without_message<std::bad_function_call>},
    {typeid(std::bad_weak_ptr), without_message<std::bad_weak_ptr>},
};

const builtin* find_builtin(std::string_view key) {
  for (const auto& b : builtins)
    if (key == b.type.name()) return &b;
  return nullptr;
}

struct registry {
  std::mutex mutex;
  std::unordered_map<std::string, exception_factory> factories;  // by typeid(E).name()

  static registry& get() {
    static registry r;
    return r;
  }
  exception_factory find(const std::string& key) {
    std::lock_guard lock(mutex);
    auto it = factories.find(key);
    return it == factories.end() ? exception_factory{} : it->second;
  }
};

}  // namespace

namespace detail {
void register_exception_type(const std::type_info& type, exception_factory make) {
  auto& r = registry::get();
  std::lock_guard lock(r.mutex);
  r.factories[type.name()] = std::move(make);
}
}  // namespace detail

std::string encode_exception(std::exception_ptr e) {
  exception_record r;
  try {
    std::rethrow_exception(e);
  } catch (const remote_error& x) {
    r.type_name = x.type_name();
    r.what = x.what();
  } catch (const std::exception& x) {
    // libstdc++ throws stream failures as its own subclass std::__ios_failure: send the
    // standard type, which the receiver can build.
    const bool library_ios_failure = dynamic_cast<const std::ios_base::failure*>(&x) &&
                                     demangle(typeid(x).name()) == "std::__ios_failure";
    const std::type_info& t = library_ios_failure ? typeid(std::ios_base::failure) : typeid(x);
    r.key = t.name();  // the decoding process decides: registered, standard, or remote_error
    r.type_name = demangle(t.name());
    r.what = x.what();
    if (const auto* se = dynamic_cast<const std::system_error*>(&x)) {
      r.code = se->code().value();
      r.category = se->code().category().name();
    }
    if (const auto* fe = dynamic_cast<const std::future_error*>(&x)) {  // a logic_error
      r.code = fe->code().value();
      r.category = fe->code().category().name();
    }
    if (const auto* be = dynamic_cast<const boost::system::system_error*>(&x)) {
      r.boost_system = true;
      r.code = be->code().value();
      r.category = be->code().category().name();
    }
    if (const auto* fe = dynamic_cast<const std::filesystem::filesystem_error*>(&x)) {
      r.path1 = fe->path1().string();
      r.path2 = fe->path2().string();
    }
  } catch (...) {
    r.type_name = "unknown exception";
  }
  return encode(r);
}

std::exception_ptr decode_exception(std::string_view in) {
  const auto r = decode<exception_record>(in);
  if (!r.key.empty()) {
    if (auto f = registry::get().find(r.key)) {
      try {
        return f(r.what);
      } catch (...) {
        return std::current_exception();  // the factory threw: that is what arrives
      }
    }
    if (const auto* b = find_builtin(r.key)) return b->make(r);
  }
  if (r.boost_system)
    if (const auto* cat = boost_category(r.category)) return make_boost_system_error(r, *cat);
  return std::make_exception_ptr(remote_error(r.type_name, r.what));
}

}  // namespace coproc
