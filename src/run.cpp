#include <coproc/run.hpp>

#include <coproc/error.hpp>

#include "run_engine.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_future.hpp>

namespace coproc {

const completed& completed::check() const& {
  if (!status.success())
    throw process_error(program, status, err.empty() ? out : err, command_line);
  return *this;
}

completed&& completed::check() && {
  static_cast<const completed&>(*this).check();
  return std::move(*this);
}

namespace detail {

// Completes `h` on its associated executor, never inside the initiating function.
template <typename Handler, typename... Args>
void post_completion(const executor_type& ex, Handler h, Args... args) {
  asio::post(ex, asio::append(std::move(h), std::move(args)...));
}

command with_run_defaults(command cmd) {
  if (!cmd.std_in_config()) cmd.std_in(stdio::null());
  if (!cmd.std_out_config()) cmd.std_out(stdio::pipe());
  if (!cmd.std_err_config()) cmd.std_err(stdio::pipe());
  return cmd;
}

void start_run(const executor_type& ex, command cmd,
               asio::any_completion_handler<void(error_code, completed)> handler) {
  cmd = with_run_defaults(std::move(cmd));
  error_code ec;
  child c = spawn(ex, cmd, ec);
  if (ec) {
    completed result;
    result.program = cmd.program();
    result.command_line = cmd.to_string();
    return post_completion(ex, std::move(handler), ec, std::move(result));
  }
  start_run_child(ex, std::move(c), cmd, std::move(handler));
}

void start_run_child(const executor_type& ex, child c, const command& cmd,
                     asio::any_completion_handler<void(error_code, completed)> handler) {
  completed result;
  result.program = cmd.program();
  result.command_line = cmd.to_string();
  auto engine = std::make_shared<run_engine>(
      ex, run_engine::settings{cmd.limits().max_output, cmd.timeout_value(), cmd.kill_grace_value(),
                               cmd.output_grace_value()});
  // Nobody else can reach a stdin pipe of a run: close it, the child reads end-of-file
  // (as Python's communicate() does).
  c.std_in().close();
  pipe_reader* out = c.std_out().is_open() ? &c.std_out() : nullptr;
  pipe_reader* err = c.std_err().is_open() ? &c.std_err() : nullptr;
  std::vector<child> children;
  children.push_back(std::move(c));
  auto slot = asio::get_associated_cancellation_slot(handler);
  auto work = asio::prefer(asio::get_associated_executor(handler, ex),
                           asio::execution::outstanding_work.tracked);
  // std::function needs a copyable target: share the move-only handler.
  auto h = std::make_shared<decltype(handler)>(std::move(handler));
  engine->start(std::move(children), out, err, slot,
                [ex, h, r = std::move(result), work](error_code ec, run_engine& e) mutable {
                  r.status = e.children().front().status().value_or(exit_status{});
                  r.out = std::move(e.out);
                  r.err = std::move(e.err);
                  r.output_truncated = e.truncated;
                  post_completion(ex, std::move(*h), ec, std::move(r));
                });
}

}  // namespace detail

completed run(command cmd) {
  asio::io_context ctx(1);
  cmd = detail::with_run_defaults(std::move(cmd));
  child c = spawn(ctx.get_executor(), cmd);  // throws spawn_error with the details
  std::future<completed> fut =
      asio::async_initiate<const asio::use_future_t<>&, void(error_code, completed)>(
          [&](auto handler) {
            detail::start_run_child(ctx.get_executor(), std::move(c), cmd, std::move(handler));
          },
          asio::use_future);
  ctx.run();
  return fut.get();
}

}  // namespace coproc
