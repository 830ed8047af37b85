// fork_pids: Python's os.fork() idiom, first with plain POSIX calls, then with coproc.
//
//   pid = os.fork()
//   if pid == 0:
//       print("child", os.getpid(), "of", os.getppid()); os._exit(0)
//   else:
//       print("parent", os.getpid(), "of child", pid); os.waitpid(pid, 0)
//
// The POSIX version works, but every line of it is a rule to remember: flush stdio before the
// fork, leave the child with _exit (never return or throw into the parent's code), reap the
// child on every path, decode the wait status. coproc::process follows those rules itself.
#include <coproc/coproc.hpp>

#include <boost/asio/io_context.hpp>

#include <cerrno>
#include <cstdio>
#include <iostream>

#include <sys/wait.h>
#include <unistd.h>

namespace asio = boost::asio;
namespace cp = coproc;

// 1. Plain POSIX.
int with_posix() {
  // Buffered output not yet written would be written by both processes: flush it first.
  std::cout.flush();
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("fork");
    return 1;
  }
  if (pid == 0) {
    std::cout << "  child: pid " << ::getpid() << ", parent " << ::getppid() << std::endl;
    // _exit, not exit or return: the parent's atexit handlers, static destructors and the
    // rest of main() must not run a second time in the child. An exception thrown here would
    // unwind into main's copy of the stack and carry on as if it were the parent.
    ::_exit(0);
  }
  std::cout << "  parent: pid " << ::getpid() << ", child " << pid << '\n';
  // Until this waitpid the ended child is a zombie; every early return or exception in the
  // parent between fork and here must remember to reap it.
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status))
    std::cout << "  child exited with code " << WEXITSTATUS(status) << '\n';
  else if (WIFSIGNALED(status))
    std::cout << "  child killed by signal " << WTERMSIG(status) << '\n';
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

// 2. The same with coproc::process. The child runs the lambda and leaves with _exit after
//    flushing stdio; an exception escaping it is printed and becomes exit code 1, never an
//    unwinding into the parent's code. The parent holds the child through a pidfd (its pid
//    cannot be reused before the reap), gets a typed exit_status from join(), and a process
//    destroyed without join() is killed and reaped: no path leaves a zombie.
int with_coproc(asio::io_context& ctx) {
  cp::process p(ctx.get_executor(), [] {
    std::cout << "  child: pid " << ::getpid() << ", parent " << ::getppid() << '\n';
  });  // returning is exit code 0; coproc flushes stdout and calls _exit for the child
  p.start();
  std::cout << "  parent: pid " << ::getpid() << ", child " << p.pid() << '\n';
  const cp::exit_status st = p.join();
  std::cout << "  child " << st.to_string() << '\n';
  return st.success() ? 0 : 1;
}

int main() {
  asio::io_context ctx;
  std::cout << "fork() and waitpid():\n";
  int failures = with_posix();
  std::cout << "coproc::process:\n";
  failures += with_coproc(ctx);
  return failures == 0 ? 0 : 1;
}
