#include <coproc/exit_status.hpp>

#include <sys/wait.h>
#include <csignal>
#include <cstring>

namespace coproc {

exit_status exit_status::from_wait_status(int status) noexcept {
  if (WIFSIGNALED(status)) return signaled(WTERMSIG(status), WCOREDUMP(status));
  return exited(WEXITSTATUS(status));
}

std::string signal_name(int sig) {
  if (const char* abbrev = sigabbrev_np(sig)) return std::string("SIG") + abbrev;
  return "SIG" + std::to_string(sig);
}

std::string exit_status::to_string() const {
  if (!is_signaled()) return "exit code " + std::to_string(code_);
  return "signal " + std::to_string(signal_) + " (" + signal_name(signal_) +
         (core_ ? ", core dumped)" : ")");
}

}  // namespace coproc
