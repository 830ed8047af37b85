#include <coproc/exit_status.hpp>

#include <gtest/gtest.h>

#include <csignal>

#include <sys/wait.h>
#include <unistd.h>

namespace {

using coproc::exit_status;

// The type is usable in constant expressions.
static_assert(exit_status{}.success());
static_assert(exit_status::exited(3).code() == 3);
static_assert(exit_status::signaled(SIGKILL).shell_code() == 128 + SIGKILL);
static_assert(exit_status::exited(1) != exit_status::exited(2));

TEST(exit_status, default_is_a_successful_exit) {
  exit_status s;
  EXPECT_TRUE(s.is_exited());
  EXPECT_FALSE(s.is_signaled());
  EXPECT_TRUE(s.success());
  EXPECT_EQ(s.code(), 0);
  EXPECT_EQ(s, exit_status::exited(0));
}

TEST(exit_status, exited_with_a_code) {
  auto s = exit_status::exited(3);
  EXPECT_TRUE(s.is_exited());
  EXPECT_FALSE(s.is_signaled());
  EXPECT_FALSE(s.success());
  EXPECT_EQ(s.code(), 3);
  EXPECT_EQ(s.signal(), 0);
  EXPECT_FALSE(s.core_dumped());
  EXPECT_EQ(s.shell_code(), 3);
  EXPECT_EQ(s.to_string(), "exit code 3");
  EXPECT_EQ(exit_status::exited(255).shell_code(), 255);
}

TEST(exit_status, signaled) {
  auto s = exit_status::signaled(SIGKILL);
  EXPECT_FALSE(s.is_exited());
  EXPECT_TRUE(s.is_signaled());
  EXPECT_FALSE(s.success());
  EXPECT_EQ(s.signal(), SIGKILL);
  EXPECT_EQ(s.code(), 0);
  EXPECT_EQ(s.shell_code(), 137);
  EXPECT_EQ(s.to_string(), "signal 9 (SIGKILL)");
}

TEST(exit_status, core_dump_is_reported) {
  auto s = exit_status::signaled(SIGSEGV, true);
  EXPECT_TRUE(s.core_dumped());
  EXPECT_EQ(s.to_string(), "signal 11 (SIGSEGV, core dumped)");
  EXPECT_NE(s, exit_status::signaled(SIGSEGV));
}

TEST(exit_status, equality_compares_all_fields) {
  EXPECT_EQ(exit_status::exited(7), exit_status::exited(7));
  EXPECT_NE(exit_status::exited(7), exit_status::exited(8));
  EXPECT_NE(exit_status::exited(9), exit_status::signaled(9));
  EXPECT_EQ(exit_status::signaled(15), exit_status::signaled(15));
}

TEST(exit_status, from_wait_status_words) {
  // Linux's encoding: code << 8 for an exit; the signal, plus 0x80 for a core dump.
  EXPECT_EQ(exit_status::from_wait_status(0), exit_status::exited(0));
  EXPECT_EQ(exit_status::from_wait_status(42 << 8), exit_status::exited(42));
  EXPECT_EQ(exit_status::from_wait_status(255 << 8), exit_status::exited(255));
  EXPECT_EQ(exit_status::from_wait_status(SIGTERM), exit_status::signaled(SIGTERM));
  EXPECT_EQ(exit_status::from_wait_status(SIGSEGV | 0x80), exit_status::signaled(SIGSEGV, true));
}

TEST(exit_status, from_real_wait_statuses) {
  pid_t a = ::fork();
  ASSERT_GE(a, 0);
  if (a == 0) ::_exit(7);
  int wa = 0;
  ASSERT_EQ(::waitpid(a, &wa, 0), a);
  EXPECT_EQ(exit_status::from_wait_status(wa), exit_status::exited(7));

  pid_t b = ::fork();
  ASSERT_GE(b, 0);
  if (b == 0) {
    for (;;) ::pause();
  }
  ::kill(b, SIGTERM);
  int wb = 0;
  ASSERT_EQ(::waitpid(b, &wb, 0), b);
  EXPECT_EQ(exit_status::from_wait_status(wb), exit_status::signaled(SIGTERM));
}

TEST(exit_status, signal_names) {
  EXPECT_EQ(coproc::signal_name(SIGKILL), "SIGKILL");
  EXPECT_EQ(coproc::signal_name(SIGTERM), "SIGTERM");
  EXPECT_EQ(coproc::signal_name(SIGINT), "SIGINT");
  EXPECT_EQ(coproc::signal_name(SIGPIPE), "SIGPIPE");
  EXPECT_EQ(coproc::signal_name(200), "SIG200");
}

}  // namespace
