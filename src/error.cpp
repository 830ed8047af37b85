#include <coproc/error.hpp>

namespace coproc {
namespace {

class coproc_category final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "coproc"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::line_too_long: return "line longer than the reader's limit";
      case errc::output_limit_exceeded: return "output larger than the capture limit";
      case errc::timed_out: return "timed out";
      case errc::not_running: return "the process was detached or is gone";
      case errc::no_pipe: return "the stream is not a pipe";
      case errc::nonzero_exit: return "the process did not exit successfully";
      case errc::malformed_message: return "malformed message";
      case errc::message_too_large: return "message larger than the connection's limit";
      case errc::type_mismatch: return "message of another type than the one requested";
      case errc::wrong_direction: return "this end of a one-way pipe cannot do that";
      case errc::no_result: return "the process ended without delivering a result";
      case errc::worker_died: return "the pool worker running the task died";
      case errc::pool_broken: return "the pool's worker initializer failed";
      case errc::shut_down: return "the pool was shut down";
    }
    return "unknown coproc error";
  }
};

std::string tail_lines(const std::string& s) {
  constexpr std::size_t max = 4096;
  if (s.size() <= max) return s;
  std::size_t start = s.size() - max;
  auto nl = s.find('\n', start);
  if (nl != std::string::npos && nl + 1 < s.size()) start = nl + 1;
  return s.substr(start);
}

std::string without_final_newline(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

}  // namespace

const boost::system::error_category& category() noexcept {
  static const coproc_category cat;
  return cat;
}

spawn_error::spawn_error(error_code ec, std::string program, std::string message)
    : boost::system::system_error(ec), program_(std::move(program)), message_(std::move(message)) {}

process_error::process_error(std::string program, exit_status status, std::string stderr_tail,
                             std::string where)
    : boost::system::system_error(make_error_code(errc::nonzero_exit)),
      message_("\"" + program + "\"" +
               (where.empty() || where == program ? "" : " (" + where + ")") + " failed with " +
               status.to_string() +
               (stderr_tail.empty()
                    ? std::string{}
                    : "; stderr ends with:\n" + without_final_newline(tail_lines(stderr_tail)))),
      program_(std::move(program)),
      status_(status),
      stderr_tail_(tail_lines(stderr_tail)) {}

}  // namespace coproc
