// The machinery shared by async_run for commands and for pipelines.
#pragma once

#include <coproc/child.hpp>
#include <coproc/error.hpp>

#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace coproc::detail {

/// Drives a set of started children to completion on a strand: captures the output of the
/// readers it is given, waits for every child, applies timeout / cancellation with the
/// terminate-grace-kill ladder, and bounds the time spent on pipes left open after exit.
class run_engine : public std::enable_shared_from_this<run_engine> {
 public:
  struct settings {
    std::size_t max_output;
    std::optional<command::duration> timeout;
    command::duration kill_grace;
    command::duration output_grace;
  };
  using done_fn = std::function<void(error_code, run_engine&)>;

  run_engine(const executor_type& ex, settings s)
      : strand_(asio::make_strand(ex)),
        s_(s),
        ladder_(strand_),
        grace_(strand_),
        timeout_(strand_) {}

  /// Takes the children (all started); `out`/`err` are the readers to capture, or null.
  void start(std::vector<child> children, pipe_reader* out, pipe_reader* err,
             asio::cancellation_slot slot, done_fn done);

  std::vector<child>& children() { return children_; }
  /// Readers the engine owns (a pipe shared by several children).
  std::vector<std::unique_ptr<pipe_reader>> owned_readers;
  std::string out, err;
  bool truncated = false;

 private:
  void cancel(error_code why);
  void signal_all(int sig);
  void read(pipe_reader* r, std::string* into);
  void task_done();
  bool all_exited() const;

  asio::strand<executor_type> strand_;
  settings s_;
  asio::steady_timer ladder_, grace_, timeout_;
  std::vector<child> children_;
  std::vector<pipe_reader*> readers_;
  asio::cancellation_slot slot_;
  done_fn done_;
  error_code ec_;
  int pending_ = 0;
  int readers_left_ = 0;
  bool cancelling_ = false;
  bool finished_ = false;
};

}  // namespace coproc::detail
