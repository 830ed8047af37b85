// Lines from a child's stdout and stderr, tagged with their stream, in arrival order.
#pragma once

#include <coproc/config.hpp>
#include <coproc/stream.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>

#include <optional>
#include <string>

namespace coproc {

/// Which of the child's output streams a line came from.
enum class source { out, err };

struct tagged_line {
  source from;
  std::string text;
  friend bool operator==(const tagged_line&, const tagged_line&) = default;
};

/// Reads lines from two readers at once and yields each with its source, in the order the
/// lines became available. Both readers must outlive the merged reader, and the merged reader
/// must outlive its outstanding operation (it is neither copyable nor movable); do not read
/// from the two readers directly while it is in use.
class merged_reader {
 public:
  merged_reader(pipe_reader& out, pipe_reader& err) noexcept : out_(&out), err_(&err) {}
  merged_reader(const merged_reader&) = delete;
  merged_reader& operator=(const merged_reader&) = delete;

  /// Next line from either stream; `std::nullopt` once both reached end-of-file.
  /// Errors as for `pipe_reader::async_read_line`.
  /// Completion: `void(error_code, std::optional<tagged_line>)`.
  /// Cancellation: per-operation, all types; no line is lost (a line that arrived while
  /// cancelling is returned by the next call).
  template <typename Token = default_token>
  auto async_read_line(Token&& token = {}) {
    return asio::async_initiate<Token, void(error_code, std::optional<tagged_line>)>(
        [this](auto handler) { start(std::move(handler)); }, token);
  }

 private:
  void start(asio::any_completion_handler<void(error_code, std::optional<tagged_line>)> h);
  friend struct merged_access;
  pipe_reader* out_;
  pipe_reader* err_;
  std::optional<tagged_line> pending_;
  bool out_done_ = false, err_done_ = false;
};

}  // namespace coproc
