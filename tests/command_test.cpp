#include <coproc/command.hpp>

#include <coproc/child.hpp>
#include <coproc/error.hpp>
#include <coproc/run.hpp>

#include "fixture.hpp"

#include <cstdlib>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace {

using namespace coproc_test;
using coproc::command;
using coproc::completed;
using coproc::stdio;

// --- the value type ------------------------------------------------------------------------

TEST(command_value, program_and_arguments) {
  command c{"git", "log", "-n", std::string("3")};
  EXPECT_EQ(c.program(), "git");
  EXPECT_EQ(c.arguments(), (std::vector<std::string>{"log", "-n", "3"}));
  EXPECT_FALSE(c.argv0().has_value());

  command d{"ls"};
  EXPECT_TRUE(d.arguments().empty());
  d.arg("-l").arg("x");
  std::vector<std::string> more{"a", "b"};
  d.args(more);
  EXPECT_EQ(d.arguments(), (std::vector<std::string>{"-l", "x", "a", "b"}));
}

TEST(command_value, rvalue_chaining_builds_a_command) {
  auto c =
      command{"p"}.arg("a").args(std::vector<std::string_view>{"b", "c"}).arg0("zero").cwd("/tmp");
  EXPECT_EQ(c.arguments(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(c.argv0(), "zero");
  EXPECT_EQ(c.working_directory(), std::filesystem::path("/tmp"));
}

TEST(command_value, environment_changes_keep_call_order) {
  command c{"p"};
  EXPECT_TRUE(c.inherits_env());
  c.env("A", "1").env_remove("B").env("A", "2");
  ASSERT_EQ(c.env_changes().size(), 3u);
  EXPECT_EQ(c.env_changes()[0].first, "A");
  EXPECT_EQ(c.env_changes()[0].second, "1");
  EXPECT_EQ(c.env_changes()[1].first, "B");
  EXPECT_FALSE(c.env_changes()[1].second.has_value());
  EXPECT_EQ(c.env_changes()[2].second, "2");

  c.env_clear();
  EXPECT_FALSE(c.inherits_env());
  EXPECT_TRUE(c.env_changes().empty());
  c.env("ONLY", "x");
  EXPECT_EQ(c.env_changes().size(), 1u);
}

TEST(command_value, stdio_settings) {
  command c{"p"};
  EXPECT_FALSE(c.std_in_config().has_value());
  EXPECT_FALSE(c.std_out_config().has_value());
  EXPECT_FALSE(c.std_err_config().has_value());

  c.input("data").std_out(stdio::file("/tmp/x", true)).merge_stderr();
  ASSERT_TRUE(c.std_in_config());
  EXPECT_EQ(c.std_in_config()->type(), stdio::kind::bytes);
  EXPECT_EQ(c.std_in_config()->data(), "data");
  EXPECT_EQ(c.std_out_config()->type(), stdio::kind::file);
  EXPECT_EQ(c.std_out_config()->path(), std::filesystem::path("/tmp/x"));
  EXPECT_TRUE(c.std_out_config()->append());
  EXPECT_EQ(c.std_err_config()->type(), stdio::kind::to_stdout);

  EXPECT_EQ(stdio::inherit().type(), stdio::kind::inherit);
  EXPECT_EQ(stdio::null().type(), stdio::kind::null);
  EXPECT_EQ(stdio::pipe().type(), stdio::kind::pipe);
  EXPECT_EQ(stdio::fd(7).type(), stdio::kind::fd);
  EXPECT_EQ(stdio::fd(7).descriptor(), 7);
  EXPECT_FALSE(stdio::file("f").append());
}

TEST(command_value, process_settings_and_limits) {
  command c{"p"};
  EXPECT_FALSE(c.process_group());
  EXPECT_FALSE(c.session());
  EXPECT_FALSE(c.dies_with_parent());
  EXPECT_EQ(c.kill_grace_value(), std::chrono::seconds(2));
  EXPECT_EQ(c.output_grace_value(), std::chrono::seconds(1));
  EXPECT_FALSE(c.timeout_value().has_value());
  EXPECT_EQ(c.limits().max_line, std::size_t{1} << 20);

  c.new_process_group().die_with_parent().max_line(10).max_output(20).pipe_size(0).timeout(
      std::chrono::milliseconds(5));
  c.kill_grace(std::chrono::milliseconds(6)).output_grace(std::chrono::milliseconds(7));
  c.pass_fd(3, 10).pass_fd(4, 11);
  EXPECT_TRUE(c.process_group());
  EXPECT_FALSE(c.session());
  EXPECT_TRUE(c.dies_with_parent());
  EXPECT_EQ(c.limits().max_line, 10u);
  EXPECT_EQ(c.limits().max_output, 20u);
  EXPECT_EQ(c.limits().pipe_size, 0u);
  EXPECT_EQ(c.timeout_value(), std::chrono::milliseconds(5));
  EXPECT_EQ(c.kill_grace_value(), std::chrono::milliseconds(6));
  EXPECT_EQ(c.output_grace_value(), std::chrono::milliseconds(7));
  EXPECT_EQ(c.extra_fds(), (std::vector<std::pair<int, int>>{{3, 10}, {4, 11}}));

  command s{"p"};
  s.new_session();
  EXPECT_TRUE(s.session());
  EXPECT_TRUE(s.process_group()) << "a new session also leads a new process group";
}

TEST(command_value, copies_are_independent) {
  command a{"p", "x"};
  command b = a;
  b.arg("y").env("K", "V").cwd("/");
  EXPECT_EQ(a.arguments().size(), 1u);
  EXPECT_TRUE(a.env_changes().empty());
  EXPECT_FALSE(a.working_directory());
  EXPECT_EQ(b.arguments().size(), 2u);
}

TEST(command_value, shell_wraps_the_script_in_sh_c) {
  auto c = command::shell("echo hi | wc -c");
  EXPECT_EQ(c.program(), "/bin/sh");
  EXPECT_EQ(c.arguments(), (std::vector<std::string>{"-c", "echo hi | wc -c"}));
}

TEST(command_value, to_string_quotes_where_needed) {
  EXPECT_EQ((command{"git", "log", "-n", "3"}.to_string()), "git log -n 3");
  EXPECT_EQ((command{"echo", "a b"}.to_string()), "echo 'a b'");
  EXPECT_EQ((command{"echo", "it's"}.to_string()), "echo 'it'\\''s'");
  EXPECT_EQ((command{"echo", ""}.to_string()), "echo ''");
  EXPECT_EQ((command{"echo", "$HOME;|&"}.to_string()), "echo '$HOME;|&'");
}

// --- what the child sees -------------------------------------------------------------------

class command_test : public io_test {
 protected:
  completed run_cmd(command c) { return run(coproc::async_run(std::move(c))); }
};

TEST_F(command_test, arguments_arrive_verbatim) {
  const std::vector<std::string> args = {"with space",
                                         "it's \"quoted\"",
                                         "ünïcødé ✓ 日本語",
                                         ";|&$",
                                         "$(echo no) `echo no` ${HOME}",
                                         "*",
                                         "",
                                         "back\\slash",
                                         "tab\there",
                                         "--",
                                         "-x",
                                         "a=b"};
  auto c = helper("args");
  c.args(args);
  auto r = run_cmd(c);
  EXPECT_TRUE(r.success()) << r.err;
  std::string expected;
  for (const auto& a : args) expected += a + "\n";
  EXPECT_EQ(r.out, expected);
}

TEST_F(command_test, argv0_is_the_program_or_what_arg0_says) {
  EXPECT_EQ(run_cmd(helper("argv0")).out, helper_path() + "\n");
  EXPECT_EQ(run_cmd(helper("argv0").arg0("custom name")).out, "custom name\n");
}

TEST_F(command_test, program_is_looked_up_in_the_childs_path) {
  auto dir = std::filesystem::path(helper_path()).parent_path();
  auto name = std::filesystem::path(helper_path()).filename().string();
  auto r = run_cmd(command{name, "outline", "found"}.env("PATH", "/nonexistent:" + dir.string()));
  EXPECT_EQ(r.out, "found\n");
  EXPECT_TRUE(r.success());
}

TEST_F(command_test, environment_is_inherited_by_default) {
  ::setenv("COPROC_TEST_INHERITED", "from parent", 1);
  auto r = run_cmd(helper("env", "COPROC_TEST_INHERITED", "env", "COPROC_TEST_UNSET_XYZ"));
  ::unsetenv("COPROC_TEST_INHERITED");
  EXPECT_EQ(r.out, "from parent\n<unset>\n");
}

TEST_F(command_test, env_sets_and_overrides) {
  ::setenv("COPROC_TEST_INHERITED", "from parent", 1);
  auto r = run_cmd(helper("env", "COPROC_TEST_INHERITED", "env", "NEW_ONE")
                       .env("COPROC_TEST_INHERITED", "overridden")
                       .env("NEW_ONE", "a=b c;d"));
  ::unsetenv("COPROC_TEST_INHERITED");
  EXPECT_EQ(r.out, "overridden\na=b c;d\n");
  EXPECT_EQ(std::getenv("NEW_ONE"), nullptr) << "the parent's environment must not change";
}

TEST_F(command_test, env_remove_unsets_an_inherited_variable) {
  ::setenv("COPROC_TEST_INHERITED", "from parent", 1);
  auto r = run_cmd(helper("env", "COPROC_TEST_INHERITED", "env", "HOME_IS_KEPT")
                       .env("HOME_IS_KEPT", "yes")
                       .env_remove("COPROC_TEST_INHERITED"));
  EXPECT_NE(std::getenv("COPROC_TEST_INHERITED"), nullptr);
  ::unsetenv("COPROC_TEST_INHERITED");
  EXPECT_EQ(r.out, "<unset>\nyes\n");
}

TEST_F(command_test, env_changes_apply_in_call_order) {
  EXPECT_EQ(run_cmd(helper("env", "K").env("K", "1").env_remove("K").env("K", "2")).out, "2\n");
  EXPECT_EQ(run_cmd(helper("env", "K").env("K", "1").env_remove("K")).out, "<unset>\n");
}

TEST_F(command_test, env_clear_starts_from_an_empty_environment) {
  ::setenv("COPROC_TEST_INHERITED", "from parent", 1);
  auto r = run_cmd(helper("environ").env_clear().env("ONLY", "this"));
  auto bare = run_cmd(helper("environ").env("IGNORED", "x").env_clear());
  ::unsetenv("COPROC_TEST_INHERITED");
  EXPECT_EQ(r.out, "ONLY=this\n");
  EXPECT_EQ(bare.out, "") << "env_clear drops earlier env() calls too";
}

TEST_F(command_test, cwd_sets_the_working_directory) {
  temp_dir dir;
  auto r = run_cmd(helper("cwd").cwd(dir.path()));
  EXPECT_EQ(r.out, std::filesystem::canonical(dir.path()).string() + "\n");
  // The parent's directory is unchanged, and the default is the parent's.
  EXPECT_EQ(run_cmd(helper("cwd")).out, std::filesystem::current_path().string() + "\n");
}

TEST_F(command_test, shell_runs_a_script) {
  auto r = run_cmd(command::shell("'" + helper_path() + "' outline 'x  y' errline e; exit 7"));
  EXPECT_EQ(r.out, "x  y\n");
  EXPECT_EQ(r.err, "e\n");
  EXPECT_EQ(r.status, coproc::exit_status::exited(7));
}

// --- stdio -----------------------------------------------------------------------------------

/// Temporarily points this process's descriptor `target` at `fd`, restoring it on
/// destruction (for the "inherit" tests).
class redirect {
 public:
  redirect(int target, int fd) : target_(target), saved_(::fcntl(target, F_DUPFD_CLOEXEC, 10)) {
    ::dup2(fd, target_);
  }
  ~redirect() { restore(); }
  void restore() {
    if (saved_ >= 0) {
      ::dup2(saved_, target_);
      ::close(saved_);
      saved_ = -1;
    }
  }

 private:
  int target_;
  int saved_;
};

TEST_F(command_test, stdin_inherit_shares_the_parents_stdin) {
  temp_dir dir;
  write_file(dir / "in", "twelve bytes");
  int fd = ::open((dir / "in").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  completed r;
  {
    redirect stdin_is_file(0, fd);
    r = run_cmd(helper("cat-count").std_in(stdio::inherit()));
  }
  ::close(fd);
  EXPECT_EQ(r.out, "12\n");
}

TEST_F(command_test, stdout_and_stderr_inherit_share_the_parents) {
  temp_dir dir;
  int fd = ::open((dir / "out").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  completed r;
  {
    redirect out(1, fd);
    redirect err(2, fd);
    r = run_cmd(helper("outline", "to-out", "errline", "to-err")
                    .std_out(stdio::inherit())
                    .std_err(stdio::inherit()));
  }
  ::close(fd);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(read_file(dir / "out"), "to-out\nto-err\n");
}

TEST_F(command_test, async_run_reads_stdin_from_dev_null_by_default) {
  EXPECT_EQ(run_cmd(helper("cat-count")).out, "0\n");
  EXPECT_EQ(run_cmd(helper("cat-count").std_in(stdio::null())).out, "0\n");
}

TEST_F(command_test, stdin_bytes_are_fed_to_the_child) {
  EXPECT_EQ(run_cmd(helper("echo").input("hello\nworld")).out, "hello\nworld");
  std::string big = pattern(3 << 20);
  auto r = run_cmd(helper("cat-count").std_in(stdio::bytes(big)));
  EXPECT_EQ(r.out, std::to_string(big.size()) + "\n");
}

TEST_F(command_test, stdin_bytes_feed_stops_quietly_when_the_child_does_not_read) {
  auto r = run_cmd(helper("outline", "done", "exit", "0").input(pattern(8 << 20)));
  EXPECT_TRUE(r.success());
  EXPECT_EQ(r.out, "done\n");
}

TEST_F(command_test, stdin_from_a_file) {
  temp_dir dir;
  write_file(dir / "in", std::string("file\0content\n", 13));
  EXPECT_EQ(run_cmd(helper("echo").std_in(stdio::file(dir / "in"))).out,
            std::string("file\0content\n", 13));
}

TEST_F(command_test, stdin_from_a_descriptor_the_caller_keeps) {
  temp_dir dir;
  write_file(dir / "in", "via fd");
  int fd = ::open((dir / "in").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto r = run_cmd(helper("echo").std_in(stdio::fd(fd)));
  EXPECT_EQ(r.out, "via fd");
  EXPECT_NE(::fcntl(fd, F_GETFD), -1) << "the caller's descriptor must stay open";
  ::close(fd);
}

TEST_F(command_test, stdout_and_stderr_to_null) {
  auto r =
      run_cmd(helper("outline", "o", "errline", "e").std_out(stdio::null()).std_err(stdio::null()));
  EXPECT_TRUE(r.success());
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "");
}

TEST_F(command_test, stdout_and_stderr_are_captured_separately_by_default) {
  auto r = run_cmd(helper("outline", "o", "errline", "e", "outline", "o2"));
  EXPECT_EQ(r.out, "o\no2\n");
  EXPECT_EQ(r.err, "e\n");
}

TEST_F(command_test, stdout_to_a_file_truncates_or_appends) {
  temp_dir dir;
  write_file(dir / "out", "old content that is longer\n");
  auto r = run_cmd(helper("outline", "new").std_out(stdio::file(dir / "out")));
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(read_file(dir / "out"), "new\n");

  run_cmd(helper("outline", "more").std_out(stdio::file(dir / "out", true)));
  EXPECT_EQ(read_file(dir / "out"), "new\nmore\n");

  run_cmd(helper("errline", "to file").std_err(stdio::file(dir / "err")));
  EXPECT_EQ(read_file(dir / "err"), "to file\n");
}

TEST_F(command_test, stdout_file_is_created_with_mode_0666_masked_by_umask) {
  temp_dir dir;
  mode_t old = ::umask(027);
  run_cmd(helper("outline", "x").std_out(stdio::file(dir / "created")));
  ::umask(old);
  auto perms = std::filesystem::status(dir / "created").permissions();
  EXPECT_EQ(perms, std::filesystem::perms(0640));
}

TEST_F(command_test, merged_stderr_keeps_the_write_order) {
  auto r = run_cmd(
      helper("outline", "1", "errline", "2", "outline", "3", "errline", "4").merge_stderr());
  EXPECT_EQ(r.out, "1\n2\n3\n4\n");
  EXPECT_EQ(r.err, "");
}

TEST_F(command_test, merged_stderr_follows_stdout_into_a_file) {
  temp_dir dir;
  auto r = run_cmd(helper("outline", "a", "errline", "b")
                       .std_out(stdio::file(dir / "both"))
                       .std_err(stdio::to_stdout()));
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(read_file(dir / "both"), "a\nb\n");
}

TEST_F(command_test, stdout_to_a_descriptor) {
  temp_dir dir;
  int fd = ::open((dir / "out").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  auto r = run_cmd(helper("outline", "via fd").std_out(stdio::fd(fd)));
  ::close(fd);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(read_file(dir / "out"), "via fd\n");
}

TEST_F(command_test, pass_fd_makes_a_descriptor_visible_under_the_given_number) {
  temp_dir dir;
  int fd = ::open((dir / "passed").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  auto r = run_cmd(helper("fdlink", "7", "notify", "7").pass_fd(7, fd));
  ::close(fd);
  EXPECT_EQ(r.out, std::filesystem::canonical(dir / "passed").string() + "\n") << r.err;
  EXPECT_EQ(read_file(dir / "passed"), "ready\n");
}

}  // namespace
