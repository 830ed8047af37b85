// Collects children nobody waits for any more, without blocking the event loop.
#pragma once

#include <coproc/config.hpp>

#include <boost/asio/execution_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <list>
#include <memory>
#include <mutex>
#include <vector>

namespace coproc::detail {

class reaper : public asio::execution_context::service {
 public:
  static asio::execution_context::id id;
  explicit reaper(asio::execution_context& ctx) : service(ctx) {}
  ~reaper() override;

  /// Takes ownership of `pidfd` and reaps its process when it exits. `killed` children are
  /// watched on the event loop and reaped (blocking briefly) if the context shuts down first.
  /// Detached children are not watched, so they never keep `io_context::run()` busy: they
  /// are reaped by `poll_detached`, which every spawn and the shutdown call.
  void adopt(const executor_type& ex, int pidfd, bool killed);
  /// Reaps the detached children that have exited, without blocking.
  void poll_detached();
  /// The reaper of `ex`'s execution context.
  static reaper& of(const executor_type& ex);

 private:
  struct entry {
    entry(const executor_type& ex, int fd, bool k) : fd(ex, fd), killed(k) {}
    asio::posix::stream_descriptor fd;
    bool killed;
  };
  void shutdown() override;
  void watch(const std::shared_ptr<entry>& e);
  void forget(const std::shared_ptr<entry>& e);

  std::mutex mutex_;
  std::list<std::shared_ptr<entry>> entries_;
  std::vector<int> detached_;  // pidfds
  bool shut_down_ = false;
};

/// waitid(P_PIDFD) without blocking; true (with `status_word` as from waitpid) once reaped.
bool try_reap(int pidfd, int& status_word, int& error) noexcept;
/// Blocks until the process behind `pidfd` exits, then reaps it.
bool reap_blocking(int pidfd, int& status_word, int& error) noexcept;

}  // namespace coproc::detail
