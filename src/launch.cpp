#include "launch.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <memory>
#include <mutex>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

// The child runs on its own stack but shares the parent's memory until execve, like
// posix_spawn does. Only raw system calls run there: no allocation, no locks, no libc state,
// and no sanitizer instrumentation or interceptors (their bookkeeping lives in the shared
// memory of the suspended parent thread).
#define COPROC_CHILD_CODE __attribute__((no_sanitize("address", "undefined", "thread"), noinline))

namespace coproc::detail {
namespace {

constexpr std::size_t child_stack_size = 64 * 1024;
constexpr int max_signal = 64;

// The kernel's struct sigaction for rt_sigaction(2) on Linux (x86-64, arm64, riscv64).
struct kernel_sigaction {
  void* handler;
  unsigned long flags;
  void* restorer;
  unsigned long mask;
};

struct child_args {
  const launch_request* req;
  pid_t parent;
  int error;
  const char* stage;
};

COPROC_CHILD_CODE [[noreturn]] void child_fail(child_args* a, const char* stage) {
  a->error = errno;
  a->stage = stage;
  syscall(SYS_exit_group, 127);
  __builtin_unreachable();
}

struct linux_dirent64 {
  unsigned long long d_ino;
  long long d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

// Without close_range: closes every descriptor >= 3 listed in /proc/self/fd that the request
// does not keep (a loop up to the descriptor limit could mean a billion calls).
COPROC_CHILD_CODE void close_listed(const launch_request& r) {
  long dir = syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) {
    // No /proc: the original soft limit bounds the descriptors the program could open.
    unsigned long stop = r.nofile ? r.nofile->rlim_cur : 1024;
    for (unsigned long fd = 3; fd < stop; ++fd) {
      bool keep = false;
      for (int i = 0; i < r.nfds; ++i) keep |= static_cast<unsigned long>(r.fds[i].child_fd) == fd;
      if (!keep) syscall(SYS_close, fd);
    }
    return;
  }
  alignas(8) char buf[2048];
  for (;;) {
    long n = syscall(SYS_getdents64, dir, buf, sizeof buf);
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      auto* d = reinterpret_cast<linux_dirent64*>(buf + off);
      off += d->d_reclen;
      long fd = 0;
      const char* c = d->d_name;
      if (*c < '0' || *c > '9') continue;
      for (; *c >= '0' && *c <= '9'; ++c) fd = fd * 10 + (*c - '0');
      bool keep = fd < 3 || fd == dir;
      for (int i = 0; i < r.nfds; ++i) keep |= r.fds[i].child_fd == fd;
      if (!keep) syscall(SYS_close, fd);
    }
  }
  syscall(SYS_close, dir);
}

COPROC_CHILD_CODE int child_main(void* arg) {
  auto* a = static_cast<child_args*>(arg);
  const launch_request& r = *a->req;

  // Default signal handlers (the parent's handlers must never run in this half-born
  // process) and SIGPIPE back to default even if the parent ignores it.
  for (int sig = 1; sig <= max_signal; ++sig) {
    kernel_sigaction old{};
    if (syscall(SYS_rt_sigaction, sig, nullptr, &old, sizeof(unsigned long)) != 0) continue;
    const bool ignored = old.handler == reinterpret_cast<void*>(SIG_IGN);
    const bool dfl = old.handler == reinterpret_cast<void*>(SIG_DFL);
    if (dfl || (ignored && sig != SIGPIPE)) continue;
    kernel_sigaction dflt{};
    dflt.handler = reinterpret_cast<void*>(SIG_DFL);
    syscall(SYS_rt_sigaction, sig, &dflt, nullptr, sizeof(unsigned long));
  }

  if (r.new_session) {
    if (syscall(SYS_setsid) < 0) child_fail(a, "setsid");
  } else if (r.new_group || r.join_group > 0) {
    if (syscall(SYS_setpgid, 0, r.join_group) < 0) child_fail(a, "setpgid");
  }
  if (r.die_with_parent) {
    if (syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) child_fail(a, "prctl");
    if (syscall(SYS_getppid) != a->parent) syscall(SYS_exit_group, 127);
  }
  if (r.cwd && syscall(SYS_chdir, r.cwd) < 0) child_fail(a, "chdir");

  // Place the requested descriptors. First move every source above all numbers involved
  // so that no dup3 can overwrite a source that is still needed.
  int top = 2;
  for (int i = 0; i < r.nfds; ++i) {
    if (r.fds[i].child_fd > top) top = r.fds[i].child_fd;
    if (r.fds[i].parent_fd > top) top = r.fds[i].parent_fd;
  }
  int temp[256];
  for (int i = 0; i < r.nfds; ++i) {
    if (r.fds[i].parent_fd == r.fds[i].child_fd) {
      temp[i] = -1;
      continue;
    }
    long t = syscall(SYS_fcntl, r.fds[i].parent_fd, F_DUPFD_CLOEXEC, top + 1);
    if (t < 0) child_fail(a, "fcntl(F_DUPFD)");
    temp[i] = static_cast<int>(t);
  }
  for (int i = 0; i < r.nfds; ++i) {
    if (temp[i] < 0) {
      if (syscall(SYS_fcntl, r.fds[i].child_fd, F_SETFD, 0) < 0) child_fail(a, "fcntl(F_SETFD)");
    } else if (syscall(SYS_dup3, temp[i], r.fds[i].child_fd, 0) < 0) {
      child_fail(a, "dup3");
    }
  }
  // Close everything from 3 up that was not asked for, whether close-on-exec or not.
  unsigned int next = 3;
  for (int i = 0; i <= r.nfds; ++i) {
    unsigned int keep = i < r.nfds ? static_cast<unsigned int>(r.fds[i].child_fd) : ~0U;
    if (i < r.nfds && keep < 3) continue;
    if (keep > next) {
      unsigned int last = keep == ~0U ? ~0U : keep - 1;
      if (syscall(SYS_close_range, next, last, 0) < 0) {
        close_listed(r);  // kernels before 5.9, or a seccomp filter that refuses it
        break;
      }
    }
    if (keep != ~0U) next = keep + 1;
  }

  if (r.nofile) syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, r.nofile, nullptr);

  unsigned long empty_mask = 0;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty_mask, nullptr, sizeof(unsigned long));

  syscall(SYS_execve, r.path, r.argv, r.envp);
  child_fail(a, "execve");
}

// One child stack per thread, reused: the parent thread is suspended while the child runs
// on it (CLONE_VFORK), so a thread never needs two.
char* child_stack_top() noexcept {
  struct stack {
    void* base = MAP_FAILED;
    ~stack() {
      if (base != MAP_FAILED) munmap(base, child_stack_size);
    }
  };
  thread_local stack s;
  if (s.base == MAP_FAILED) {
    s.base = mmap(nullptr, child_stack_size, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (s.base == MAP_FAILED) return nullptr;
  }
  return static_cast<char*>(s.base) + child_stack_size;
}

// ThreadSanitizer intercepts clone() and treats it as fork(), after which it refuses to
// start threads; its interceptor also runs in the CLONE_VM child. Call glibc's own clone.
using clone_fn = int (*)(int (*)(void*), void*, int, void*, ...);
clone_fn libc_clone() noexcept {
#if defined(__SANITIZE_THREAD__)
  static clone_fn fn = [] {
    void* libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    void* sym = libc ? dlsym(libc, "clone") : nullptr;
    return sym ? reinterpret_cast<clone_fn>(sym) : &::clone;
  }();
  return fn;
#else
  return &::clone;
#endif
}

rlimit original_nofile;
bool nofile_raised = false;

}  // namespace

const rlimit* raise_nofile_limit() noexcept {
  static std::once_flag once;
  std::call_once(once, [] {
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= lim.rlim_max) return;
    original_nofile = lim;
    rlimit raised = lim;
    raised.rlim_cur = lim.rlim_max;
    nofile_raised = setrlimit(RLIMIT_NOFILE, &raised) == 0;
  });
  return nofile_raised ? &original_nofile : nullptr;
}

launch_result launch(const launch_request& req) noexcept {
  launch_result res;
  if (req.nfds > 256) {
    res.error = EMFILE;
    res.stage = "pass_fd (at most 256 descriptors)";
    return res;
  }
  char* stack = child_stack_top();
  if (!stack) {
    res.error = errno;
    res.stage = "mmap";
    return res;
  }
  child_args args{&req, getpid(), 0, nullptr};

  // Block every signal so that no handler of the parent runs on the shared memory in the
  // child before it resets them; the child starts with an empty mask. The raw call also
  // blocks glibc's internal signals (SIGCANCEL, SIGSETXID), which pthread_sigmask skips.
  unsigned long all = ~0UL, old = 0;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, sizeof(unsigned long));
  int pidfd = -1;
  int pid = libc_clone()(child_main, stack, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &args,
                         &pidfd);
  const int clone_errno = errno;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, nullptr, sizeof(unsigned long));

  if (pid < 0) {
    res.error = clone_errno;
    res.stage = "clone";
    return res;
  }
  if (args.stage) {
    // The child exited before execve: reap it now (it is already a zombie or about to be).
    siginfo_t info{};
    while (waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &info, WEXITED) < 0 &&
           errno == EINTR) {
    }
    close(pidfd);
    res.error = args.error;
    res.stage = args.stage;
    return res;
  }
  res.pid = pid;
  res.pidfd = pidfd;
  return res;
}

}  // namespace coproc::detail
