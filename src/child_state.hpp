// The shared state behind a coproc::child.
#pragma once

#include <coproc/child.hpp>

#include <boost/asio/posix/stream_descriptor.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace coproc::detail {

struct child_state {
  explicit child_state(const executor_type& ex) : pidfd(ex) {}

  executor_type executor() { return pidfd.get_executor(); }  // kept after close/release
  std::string program;
  int pid = -1;
  asio::posix::stream_descriptor pidfd;
  pipe_writer in;
  pipe_reader out;
  pipe_reader err;
  std::optional<exit_status> status;
  bool detached = false;
  bool lost = false;             // reaped by someone else: no status (ECHILD)
  pipe_writer feed;              // stdin fed with stdio::bytes
  std::vector<int> descendants;  // found by signal_tree when the child leads no group
  int pgid = 0;                  // the process group signal_tree targets; 0: none of its own

  /// Records the exit if the process has been reaped; true once reaped.
  bool poll_exit(error_code& ec);
  void signal(int sig, error_code& ec);
  void signal_tree(int sig, error_code& ec);
};

}  // namespace coproc::detail

namespace coproc::detail {
/// Grows the pipe behind `fd` to `size` bytes, best effort (0: leave it).
void grow_pipe(int fd, std::size_t size);
/// spawn() that joins process group `pgid` (0: as the command says).
// Wraps a process this program forked itself (its pidfd from pidfd_open) as a child.
child adopt_process(const executor_type& ex, int pid, int pidfd, std::string name);
// The pidfd of a running child, or -1.
int pidfd_of(child& c);
child spawn_in_group(const executor_type& ex, const command& cmd, int pgid, error_code& ec,
                     std::string& what);
}  // namespace coproc::detail
