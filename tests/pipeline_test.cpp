#include <coproc/pipeline.hpp>

#include <coproc/error.hpp>

#include "fixture.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <csignal>
#include <future>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace {

using namespace coproc_test;
using namespace boost::asio::experimental::awaitable_operators;
using coproc::command;
using coproc::exit_status;
using coproc::pipeline;
using coproc::pipeline_result;
using coproc::stdio;

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

class pipeline_test : public io_test {
 protected:
  pipeline_result run_pipe(pipeline p) { return run(coproc::async_run(std::move(p))); }
  std::tuple<error_code, pipeline_result> run_pipe_tuple(pipeline p) {
    return run(coproc::async_run(ex(), std::move(p), tuple_awaitable));
  }

  /// The helper under another name (a symlink), so messages can tell stages apart.
  command stage(const std::string& name) {
    auto link = dir_ / name;
    if (!std::filesystem::exists(link)) std::filesystem::create_symlink(helper_path(), link);
    return command{link.string()};
  }
  temp_dir dir_;
};

TEST(pipeline_value, operator_bar_builds_stages_in_order) {
  pipeline p = command{"a"} | command{"b"} | command{"c"};
  ASSERT_EQ(p.stages().size(), 3u);
  EXPECT_EQ(p.stages()[0].program(), "a");
  EXPECT_EQ(p.stages()[2].program(), "c");
  pipeline_result r;
  r.statuses = {exit_status::exited(0), exit_status::exited(0)};
  EXPECT_TRUE(r.success());
  r.statuses.push_back(exit_status::exited(1));
  EXPECT_FALSE(r.success());
  EXPECT_EQ(r.status(), exit_status::exited(1));
  r.statuses = {exit_status::signaled(SIGPIPE), exit_status::exited(0)};
  EXPECT_FALSE(r.success()) << "pipefail: any failing stage fails the pipeline";
  EXPECT_EQ(r.status(), exit_status::exited(0));
}

TEST_F(pipeline_test, data_flows_through_every_stage) {
  auto r = run_pipe(helper("outline", "a", "outline", "b") | helper("echo") | helper("cat-count"));
  EXPECT_EQ(r.out, "4\n");
  ASSERT_EQ(r.statuses.size(), 3u);
  for (auto st : r.statuses) EXPECT_EQ(st, exit_status::exited(0));
  EXPECT_TRUE(r.success());
  EXPECT_EQ(r.programs, (std::vector<std::string>{helper_path(), helper_path(), helper_path()}));
  EXPECT_FALSE(r.output_truncated);
}

TEST_F(pipeline_test, lots_of_data_flows_between_the_children) {
  constexpr std::size_t n = 50u << 20;
  auto r = run_pipe(helper("out", std::to_string(n)) | helper("echo") | helper("echo"));
  ASSERT_EQ(r.out.size(), n);
  EXPECT_EQ(pattern_mismatch(r.out), std::string::npos);
  EXPECT_TRUE(r.success());
}

TEST_F(pipeline_test, every_stage_reports_its_status) {
  auto r = run_pipe(helper("outline", "x", "exit", "3") | helper("cat-count", "exit", "0") |
                    helper("cat-count", "exit", "5"));
  EXPECT_EQ(r.statuses, (std::vector<exit_status>{exit_status::exited(3), exit_status::exited(0),
                                                  exit_status::exited(5)}));
  EXPECT_EQ(r.status(), exit_status::exited(5));
  EXPECT_FALSE(r.success());
  EXPECT_EQ(r.out, "2\n");
}

TEST_F(pipeline_test, check_is_pipefail_and_names_the_first_failing_stage) {
  auto r = run_pipe(
      stage("stage-one").arg("outline").arg("x") |
      stage("stage-two").arg("errline").arg("two failed").arg("wait-stdin").arg("exit").arg("4") |
      stage("stage-three").arg("wait-stdin").arg("exit").arg("6"));
  EXPECT_EQ(r.statuses, (std::vector<exit_status>{exit_status::exited(0), exit_status::exited(4),
                                                  exit_status::exited(6)}));
  try {
    r.check();
    ADD_FAILURE() << "check() did not throw";
  } catch (const coproc::process_error& e) {
    EXPECT_NE(e.program().find("stage-two"), std::string::npos) << e.program();
    EXPECT_EQ(e.status(), exit_status::exited(4));
    std::string what = e.what();
    EXPECT_NE(what.find("stage-two"), std::string::npos) << what;
    EXPECT_EQ(what.find("stage-three"), std::string::npos) << what;
    EXPECT_NE(what.find("stage 2 of 3"), std::string::npos) << what;
    EXPECT_NE(what.find("exit code 4"), std::string::npos) << what;
  }
}

TEST_F(pipeline_test, check_passes_when_every_stage_succeeds) {
  auto r = run_pipe(helper("outline", "fine") | helper("echo"));
  EXPECT_NO_THROW(r.check());
  EXPECT_EQ(std::move(r).check().out, "fine\n");
}

TEST_F(pipeline_test, a_failing_first_stage_fails_the_pipeline_even_if_the_last_succeeds) {
  auto r = run_pipe(helper("exit", "1") | helper("cat-count"));
  EXPECT_EQ(r.status(), exit_status::exited(0));
  EXPECT_FALSE(r.success());
  EXPECT_THROW(r.check(), coproc::process_error);
}

TEST_F(pipeline_test, every_stages_stderr_is_captured) {
  auto r = run_pipe(helper("errline", "from one", "outline", "data") |
                    helper("errline", "from two", "echo"));
  EXPECT_EQ(r.out, "data\n");
  auto lines = split_lines(r.err);
  std::sort(lines.begin(), lines.end());
  EXPECT_EQ(lines, (std::vector<std::string>{"from one", "from two"}));
}

TEST_F(pipeline_test, first_stdin_is_dev_null_unless_set) {
  EXPECT_EQ(run_pipe(helper("cat-count") | helper("echo")).out, "0\n");
  EXPECT_EQ(run_pipe(helper("cat-count").input("abc") | helper("echo")).out, "3\n");
}

TEST_F(pipeline_test, last_stdout_and_stage_stderr_follow_their_commands) {
  temp_dir dir;
  auto r = run_pipe(helper("outline", "x", "errline", "quiet").std_err(stdio::null()) |
                    helper("echo").std_out(stdio::file(dir / "out")));
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(read_file(dir / "out"), "x\n");
}

TEST_F(pipeline_test, a_consumer_that_exits_early_ends_the_producer_with_sigpipe) {
  auto r = run_pipe(helper("out", std::to_string(500u << 20)) | helper("exit", "0"));
  ASSERT_EQ(r.statuses.size(), 2u);
  EXPECT_EQ(r.statuses[0], exit_status::signaled(SIGPIPE))
      << "children must start with SIGPIPE at its default (exit code 124: it was ignored)";
  EXPECT_EQ(r.statuses[1], exit_status::exited(0));
}

TEST_F(pipeline_test, a_single_stage_pipeline_works) {
  auto r = run_pipe(pipeline{{helper("outline", "alone")}});
  EXPECT_EQ(r.out, "alone\n");
  EXPECT_EQ(r.statuses, (std::vector<exit_status>{exit_status::exited(0)}));
}

TEST_F(pipeline_test, spawned_stages_share_one_new_process_group) {
  auto children =
      coproc::spawn(ex(), helper("pgid") | helper("echo", "pgid").std_out(stdio::pipe()));
  ASSERT_EQ(children.size(), 2u);
  EXPECT_FALSE(children[0].std_out().is_open()) << "stage 0's stdout goes to stage 1";
  auto lines = split_lines(run(children[1].std_out().async_read_all()));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], lines[1]);
  EXPECT_NE(lines[0], std::to_string(::getpgrp()));
  EXPECT_EQ(lines[0], std::to_string(children[0].pid())) << "the first stage leads the group";
  for (auto& c : children) EXPECT_TRUE(run(c.async_wait()).success());
}

TEST_F(pipeline_test, a_stage_that_fails_to_spawn_kills_the_started_ones) {
  try {
    auto children = coproc::spawn(
        ex(), helper("sleep-forever") | helper("echo") | command{"/nonexistent/coproc-stage"});
    ADD_FAILURE() << "spawn succeeded";
  } catch (const coproc::spawn_error& e) {
    EXPECT_EQ(e.program(), "/nonexistent/coproc-stage") << "program() names the failing stage";
    EXPECT_NE(std::string(e.what()).find("/nonexistent/coproc-stage"), std::string::npos)
        << e.what();
  }
  // The fixture checks that the first stages were killed and reaped, and no pipe leaked.
  auto [ec, r] = run_pipe_tuple(helper("sleep-forever") | command{"/nonexistent/coproc-stage"});
  EXPECT_EQ(ec, boost::system::errc::no_such_file_or_directory);
  // The throwing forms name the stage that failed.
  for (int form = 0; form < 2; ++form) {
    try {
      auto p = helper("sleep-forever") | command{"/nonexistent/coproc-stage"};
      if (form == 0)
        coproc::run(std::move(p));
      else
        run_pipe(std::move(p));
      ADD_FAILURE() << "no spawn_error";
    } catch (const coproc::spawn_error& e) {
      EXPECT_EQ(e.program(), "/nonexistent/coproc-stage");
      EXPECT_NE(std::string(e.what()).find("/nonexistent/coproc-stage"), std::string::npos);
    }
  }
}

TEST_F(pipeline_test, a_stage_stderr_pipe_joins_the_captured_stderr) {
  // A pipe nobody reads would block the stage once full: it is read with the others.
  auto r = run_pipe(helper("err", "1000000").std_err(coproc::stdio::pipe()) | helper("cat-count"));
  EXPECT_EQ(r.err.size(), 1000000u);
  EXPECT_EQ(r.out, "0\n");
  EXPECT_TRUE(r.success());
}

TEST_F(pipeline_test, timeout_comes_from_the_first_stage_and_kills_every_stage) {
  auto [ec, r] = run_pipe_tuple(helper("sleep-forever").timeout(50ms).kill_grace(5s) |
                                helper("echo") | helper("echo"));
  EXPECT_EQ(ec, coproc::errc::timed_out);
  ASSERT_EQ(r.statuses.size(), 3u);
  for (auto st : r.statuses) EXPECT_EQ(st, exit_status::signaled(SIGTERM));
}

TEST_F(pipeline_test, timeout_escalates_to_sigkill_for_the_whole_group) {
  auto [ec, r] = run_pipe_tuple(helper("no-term", "sleep-forever").timeout(50ms).kill_grace(50ms) |
                                helper("no-term", "echo"));
  EXPECT_EQ(ec, coproc::errc::timed_out);
  ASSERT_EQ(r.statuses.size(), 2u);
  // A stage killed before it ignored SIGTERM shows SIGTERM; either way it was killed.
  for (auto st : r.statuses) EXPECT_TRUE(st.is_signaled()) << st.to_string();
}

TEST_F(pipeline_test, cancellation_kills_every_stage) {
  raw_pipe witness;
  auto p = helper("notify", "3", "sleep-forever").pass_fd(3, witness.write_end()) | helper("echo");
  auto reader = witness.reader(ex());
  auto [ec, r, unused] =
      run([&]() -> asio::awaitable<std::tuple<error_code, pipeline_result, int>> {
        asio::cancellation_signal sig;
        auto runner = [&]() -> asio::awaitable<std::tuple<error_code, pipeline_result>> {
          co_return co_await coproc::async_run(
              ex(), p, asio::bind_cancellation_slot(sig.slot(), tuple_awaitable));
        };
        auto canceller = [&]() -> asio::awaitable<int> {
          auto ready = co_await reader.async_read_line();
          EXPECT_EQ(ready, "ready");
          witness.close_write();
          sig.emit(asio::cancellation_type::terminal);
          co_return 0;
        };
        co_return co_await (runner() && canceller());
      }());
  (void)unused;
  EXPECT_EQ(ec, asio::error::operation_aborted);
  ASSERT_EQ(r.statuses.size(), 2u);
  for (auto st : r.statuses) EXPECT_TRUE(st.is_signaled()) << st.to_string();
}

TEST_F(pipeline_test, callback_future_and_blocking_forms) {
  std::optional<pipeline_result> via_callback;
  coproc::async_run(ex(), helper("outline", "cb") | helper("echo"),
                    [&](error_code ec, pipeline_result r) {
                      EXPECT_FALSE(ec);
                      via_callback = std::move(r);
                    });
  ASSERT_TRUE(run_until([&] { return via_callback.has_value(); }));
  EXPECT_EQ(via_callback->out, "cb\n");

  auto guard = asio::make_work_guard(ctx());
  std::thread runner([&] { ctx().run(); });
  std::future<pipeline_result> f =
      coproc::async_run(ex(), helper("outline", "fut") | helper("echo"), asio::use_future);
  bool ready = f.wait_for(30s) == std::future_status::ready;
  guard.reset();
  ctx().stop();
  runner.join();
  ASSERT_TRUE(ready);
  EXPECT_EQ(f.get().out, "fut\n");

  auto blocking = coproc::run(helper("outline", "blocking", "exit", "2") | helper("echo"));
  EXPECT_EQ(blocking.out, "blocking\n");
  EXPECT_EQ(blocking.statuses[0], exit_status::exited(2));
}

}  // namespace
