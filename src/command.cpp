#include <coproc/command.hpp>

namespace coproc {
namespace {

std::string quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789-_./=:,+@%") == std::string::npos)
    return s;
  std::string q = "'";
  for (char c : s) {
    if (c == '\'')
      q += "'\\''";
    else
      q += c;
  }
  return q + "'";
}

}  // namespace

std::string command::to_string() const {
  std::string s = quote(program_);
  for (const auto& a : args_) s += ' ' + quote(a);
  return s;
}

}  // namespace coproc
