// a | b | c: commands connected stdout to stdin, child to child.
#pragma once

#include <coproc/child.hpp>
#include <coproc/command.hpp>
#include <coproc/config.hpp>
#include <coproc/exit_status.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/this_coro.hpp>

#include <memory>
#include <string>
#include <vector>

namespace coproc {

/// Commands whose stdout feeds the next one's stdin through a pipe between the children
/// (the parent never touches the data). All stages share one new process group, so a
/// signal to the tree reaches every stage.
class pipeline {
 public:
  pipeline() = default;
  explicit pipeline(std::vector<command> stages) : stages_(std::move(stages)) {}
  const std::vector<command>& stages() const noexcept { return stages_; }
  std::vector<command>& stages() noexcept { return stages_; }

 private:
  std::vector<command> stages_;
};

/// `command{"a"} | command{"b"} | command{"c"}` builds a pipeline.
inline pipeline operator|(command a, command b) {
  std::vector<command> v;
  v.push_back(std::move(a));
  v.push_back(std::move(b));
  return pipeline{std::move(v)};
}
inline pipeline operator|(pipeline p, command c) {
  p.stages().push_back(std::move(c));
  return p;
}

/// Starts every stage. Stage i's stdout is connected to stage i+1's stdin (their own stdin /
/// stdout settings are ignored there); the first stage's stdin, the last stage's stdout and
/// every stage's stderr follow their commands. If any stage fails to start, the stages
/// already started are killed and reaped and `spawn_error` is thrown.
std::vector<child> spawn(const executor_type& ex, const pipeline& p);

/// The outcome of running a pipeline.
struct pipeline_result {
  std::vector<std::string> programs;
  /// One per stage, in order.
  std::vector<exit_status> statuses;
  /// The last stage's stdout and all stages' stderr (unless the commands set them).
  std::string out, err;
  bool output_truncated = false;

  /// The last stage's status, as a shell reports it.
  exit_status status() const { return statuses.empty() ? exit_status{} : statuses.back(); }
  /// pipefail: true when every stage exited with 0.
  bool success() const noexcept;
  /// pipefail: throws `process_error` for the first (leftmost) stage that failed.
  const pipeline_result& check() const&;
  pipeline_result&& check() &&;
};

namespace detail {
/// Where a failed spawn's program and message go, for the forms that throw `spawn_error`.
struct spawn_failure {
  std::string program, message;
};
void start_run_pipeline(const executor_type& ex, pipeline p,
                        asio::any_completion_handler<void(error_code, pipeline_result)> h,
                        std::shared_ptr<spawn_failure> failure = nullptr);
/// Rethrows `spawn_error` if `failure` says a spawn failed with `ec`.
void throw_spawn_failure(const error_code& ec, const spawn_failure& failure);
}  // namespace detail

/// Runs a pipeline to completion, as `async_run` does a command: the first stage's stdin is
/// /dev/null, the last stage's stdout and every stage's stderr are captured, unless the
/// commands say otherwise. Timeout and grace periods come from the first stage's command.
/// Cancellation and errors as for `async_run`; the ladder signals the pipeline's group.
/// Completion: `void(error_code, pipeline_result)`.
template <typename Token = default_token>
auto async_run(const executor_type& ex, pipeline p, Token&& token = {}) {
  return asio::async_initiate<Token, void(error_code, pipeline_result)>(
      [](auto handler, const executor_type& ex, pipeline p) {
        detail::start_run_pipeline(ex, std::move(p), std::move(handler));
      },
      token, ex, std::move(p));
}

/// `co_await async_run(a | b)` inside a coroutine. Unlike the token form, a spawn failure
/// arrives as `spawn_error` naming the stage's program or path.
inline asio::awaitable<pipeline_result> async_run(pipeline p) {
  auto ex = co_await asio::this_coro::executor;
  auto failure = std::make_shared<detail::spawn_failure>();
  auto [ec, r] = co_await asio::async_initiate<const asio::as_tuple_t<asio::use_awaitable_t<>>,
                                               void(error_code, pipeline_result)>(
      [&](auto handler) {
        detail::start_run_pipeline(ex, std::move(p), std::move(handler), failure);
      },
      asio::as_tuple(asio::use_awaitable));
  if (ec) detail::throw_spawn_failure(ec, *failure);
  co_return std::move(r);
}

/// Blocking form: runs on a private io_context.
pipeline_result run(pipeline p);

}  // namespace coproc
