#include "reaper.hpp"

#include <boost/asio/execution/context.hpp>
#include <boost/asio/query.hpp>

#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cerrno>

namespace coproc::detail {

asio::execution_context::id reaper::id;

namespace {
int to_status_word(const siginfo_t& si) {
  switch (si.si_code) {
    case CLD_EXITED: return (si.si_status & 0xff) << 8;
    case CLD_DUMPED: return si.si_status | 0x80;
    default: return si.si_status & 0x7f;
  }
}
}  // namespace

bool try_reap(int pidfd, int& status_word, int& error) noexcept {
  siginfo_t si{};
  int r;
  do r = waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &si, WEXITED | WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    error = errno;
    return false;
  }
  error = 0;
  if (si.si_pid == 0) return false;
  status_word = to_status_word(si);
  return true;
}

bool reap_blocking(int pidfd, int& status_word, int& error) noexcept {
  for (;;) {
    if (try_reap(pidfd, status_word, error)) return true;
    if (error) return false;
    pollfd p{pidfd, POLLIN, 0};
    if (poll(&p, 1, -1) < 0 && errno != EINTR) {
      error = errno;
      return false;
    }
  }
}

reaper::~reaper() = default;

reaper& reaper::of(const executor_type& ex) {
  return asio::use_service<reaper>(asio::query(ex, asio::execution::context));
}

void reaper::adopt(const executor_type& ex, int pidfd, bool killed) {
  int status, error;
  if (try_reap(pidfd, status, error) || error) {
    ::close(pidfd);
    return;
  }
  if (!killed) {
    std::lock_guard lock(mutex_);
    if (shut_down_)
      ::close(pidfd);
    else
      detached_.push_back(pidfd);
    return;
  }
  auto e = std::make_shared<entry>(ex, pidfd, killed);
  {
    std::lock_guard lock(mutex_);
    if (shut_down_) {
      // The context is going away: reap the killed child here, leave the others to init.
      if (killed) reap_blocking(pidfd, status, error);
      return;
    }
    entries_.push_back(e);
  }
  watch(e);
}

void reaper::poll_detached() {
  std::lock_guard lock(mutex_);
  std::erase_if(detached_, [](int fd) {
    int status, error;
    if (!try_reap(fd, status, error) && !error) return false;
    ::close(fd);
    return true;
  });
}

void reaper::watch(const std::shared_ptr<entry>& e) {
  e->fd.async_wait(asio::posix::descriptor_base::wait_read, [this, e](error_code ec) {
    if (ec == asio::error::operation_aborted) return;
    int status, error;
    if (!try_reap(e->fd.native_handle(), status, error) && !error) return watch(e);
    forget(e);
  });
}

void reaper::forget(const std::shared_ptr<entry>& e) {
  std::lock_guard lock(mutex_);
  entries_.remove(e);
}

void reaper::shutdown() {
  poll_detached();
  {
    // Still running: they are re-parented to init (or a subreaper) when this process exits.
    std::lock_guard lock(mutex_);
    shut_down_ = true;
    for (int fd : detached_) ::close(fd);
    detached_.clear();
  }
  std::list<std::shared_ptr<entry>> left;
  {
    std::lock_guard lock(mutex_);
    shut_down_ = true;
    left.swap(entries_);
  }
  for (auto& e : left) {
    int status, error;
    if (e->killed) reap_blocking(e->fd.native_handle(), status, error);
  }
}

}  // namespace coproc::detail
