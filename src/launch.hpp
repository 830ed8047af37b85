// The launch step: clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD) + execve, owned by coproc.
#pragma once

#include <sys/resource.h>

namespace coproc::detail {

struct fd_mapping {
  int child_fd;   // the number the child sees
  int parent_fd;  // the parent's descriptor to place there
};

struct launch_request {
  const char* path = nullptr;  // resolved executable
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* cwd = nullptr;        // nullptr: the parent's
  const fd_mapping* fds = nullptr;  // sorted by child_fd, no duplicates
  int nfds = 0;
  bool new_group = false;
  int join_group = 0;  // > 0: join this existing process group
  bool new_session = false;
  bool die_with_parent = false;
  const rlimit* nofile = nullptr;  // RLIMIT_NOFILE to restore in the child, if any
};

struct launch_result {
  int pid = -1;
  int pidfd = -1;
  int error = 0;                // errno of the failed step
  const char* stage = nullptr;  // "clone", "chdir", "execve", ...
};

/// Starts the child. On success returns its pid and a pidfd (O_CLOEXEC). On failure no
/// process is left: a child that failed before execve has been reaped.
launch_result launch(const launch_request& req) noexcept;

/// Raises RLIMIT_NOFILE's soft limit to the hard limit once per process (one pidfd per live
/// child adds up) and returns the original limit, which children get back; nullptr if
/// nothing was changed.
const rlimit* raise_nofile_limit() noexcept;

}  // namespace coproc::detail
