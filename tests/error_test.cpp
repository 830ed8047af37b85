#include <coproc/error.hpp>

#include <gtest/gtest.h>

#include <boost/system/errc.hpp>

#include <set>
#include <string>

namespace {

using coproc::errc;
using coproc::error_code;

const errc all_errcs[] = {errc::line_too_long, errc::output_limit_exceeded,
                          errc::timed_out,     errc::not_running,
                          errc::no_pipe,       errc::nonzero_exit};

TEST(error, category_is_named_coproc) { EXPECT_STREQ(coproc::category().name(), "coproc"); }

TEST(error, every_errc_has_its_own_message) {
  std::set<std::string> messages;
  for (errc e : all_errcs) {
    error_code ec = coproc::make_error_code(e);
    EXPECT_EQ(&ec.category(), &coproc::category());
    EXPECT_EQ(ec.value(), static_cast<int>(e));
    EXPECT_FALSE(ec.message().empty());
    EXPECT_TRUE(messages.insert(ec.message()).second) << "duplicate: " << ec.message();
  }
}

TEST(error, errc_converts_to_error_code_implicitly) {
  error_code ec = errc::timed_out;
  EXPECT_TRUE(ec == errc::timed_out);
  EXPECT_FALSE(ec == errc::line_too_long);
  EXPECT_TRUE(static_cast<bool>(ec));
}

TEST(error, coproc_codes_differ_from_errno_codes_with_the_same_value) {
  for (errc e : all_errcs) {
    error_code mine = e;
    error_code sys(static_cast<int>(e), boost::system::generic_category());
    EXPECT_NE(mine, sys);
  }
}

TEST(error, spawn_error_carries_code_program_and_detail) {
  error_code ec(ENOENT, boost::system::generic_category());
  coproc::spawn_error e(ec, "frobnicate", "spawn \"frobnicate\": No such file or directory");
  EXPECT_EQ(e.code(), ec);
  EXPECT_EQ(e.program(), "frobnicate");
  EXPECT_NE(std::string(e.what()).find("frobnicate"), std::string::npos) << e.what();
  const boost::system::system_error& base = e;  // catchable as system_error
  EXPECT_EQ(base.code(), boost::system::errc::no_such_file_or_directory);
}

TEST(error, process_error_names_program_status_and_stderr) {
  auto st = coproc::exit_status::exited(3);
  coproc::process_error e("make", st, "compiling\nerror: boom\n");
  EXPECT_EQ(e.code(), errc::nonzero_exit);
  EXPECT_EQ(e.program(), "make");
  EXPECT_EQ(e.status(), st);
  EXPECT_EQ(e.stderr_tail(), "compiling\nerror: boom\n");
  std::string what = e.what();
  EXPECT_NE(what.find("make"), std::string::npos) << what;
  EXPECT_NE(what.find("exit code 3"), std::string::npos) << what;
  EXPECT_NE(what.find("error: boom"), std::string::npos) << what;
}

TEST(error, process_error_names_the_signal) {
  coproc::process_error e("sleep", coproc::exit_status::signaled(9), "");
  std::string what = e.what();
  EXPECT_NE(what.find("SIGKILL"), std::string::npos) << what;
  EXPECT_TRUE(e.stderr_tail().empty());
}

TEST(error, process_error_keeps_only_the_tail_cut_at_a_line_start) {
  std::string err;
  for (int i = 0; i < 2000; ++i) err += "line " + std::to_string(i) + "\n";
  ASSERT_GT(err.size(), 4096u);
  coproc::process_error e("p", coproc::exit_status::exited(1), err);
  const std::string& tail = e.stderr_tail();
  EXPECT_LE(tail.size(), 4096u);
  EXPECT_GT(tail.size(), 3000u);
  ASSERT_TRUE(err.ends_with(tail));
  EXPECT_EQ(err[err.size() - tail.size() - 1], '\n') << "the tail does not start a line";
  EXPECT_TRUE(tail.ends_with("line 1999\n"));
  EXPECT_LT(std::string(e.what()).size(), err.size());
}

TEST(error, process_error_tail_of_one_huge_line_is_still_bounded) {
  std::string err(100000, 'x');
  coproc::process_error e("p", coproc::exit_status::exited(1), err);
  EXPECT_LE(e.stderr_tail().size(), 4096u);
  EXPECT_FALSE(e.stderr_tail().empty());
}

}  // namespace
