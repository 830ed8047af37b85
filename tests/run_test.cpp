#include <coproc/run.hpp>

#include <coproc/error.hpp>

#include "fixture.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/use_future.hpp>

#include <csignal>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace {

using namespace coproc_test;
using namespace boost::asio::experimental::awaitable_operators;
using coproc::command;
using coproc::completed;
using coproc::exit_status;
using coproc::stdio;

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

class run_test : public io_test {
 protected:
  completed run_cmd(command c) { return run(coproc::async_run(std::move(c))); }
  std::tuple<error_code, completed> run_tuple(command c,
                                              std::chrono::steady_clock::duration d = 60s) {
    return run(coproc::async_run(ex(), std::move(c), tuple_awaitable), d);
  }
};

TEST_F(run_test, captures_stdout_stderr_and_status) {
  auto r = run_cmd(helper("outline", "hello", "errline", "oops", "exit", "3"));
  EXPECT_EQ(r.program, helper_path());
  EXPECT_EQ(r.out, "hello\n");
  EXPECT_EQ(r.err, "oops\n");
  EXPECT_EQ(r.status, exit_status::exited(3));
  EXPECT_FALSE(r.success());
  EXPECT_FALSE(r.output_truncated);
}

TEST_F(run_test, a_non_zero_exit_or_a_signal_is_a_value_not_an_error) {
  auto [ec, r] = run_tuple(helper("crash"));
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(r.status.signal(), SIGABRT);
}

TEST_F(run_test, check_returns_the_result_on_success) {
  auto r = run_cmd(helper("outline", "fine"));
  EXPECT_NO_THROW(r.check());
  EXPECT_EQ(r.check().out, "fine\n");
  completed moved = std::move(r).check();
  EXPECT_EQ(moved.out, "fine\n");
}

TEST_F(run_test, check_throws_process_error_naming_program_status_and_stderr_tail) {
  auto r = run_cmd(helper("errline", "first problem", "errline", "fatal: it broke", "exit", "2"));
  try {
    r.check();
    ADD_FAILURE() << "check() did not throw";
  } catch (const coproc::process_error& e) {
    EXPECT_EQ(e.program(), helper_path());
    EXPECT_EQ(e.status(), exit_status::exited(2));
    EXPECT_EQ(e.code(), coproc::errc::nonzero_exit);
    EXPECT_NE(e.stderr_tail().find("fatal: it broke"), std::string::npos) << e.stderr_tail();
    std::string what = e.what();
    EXPECT_NE(what.find(helper_path()), std::string::npos) << what;
    EXPECT_NE(what.find("exit code 2"), std::string::npos) << what;
    EXPECT_NE(what.find("fatal: it broke"), std::string::npos) << what;
  }
}

TEST_F(run_test, check_on_a_signal_names_it) {
  auto r = run_cmd(helper("errline", "about to crash", "crash"));
  try {
    std::move(r).check();
    ADD_FAILURE() << "check() did not throw";
  } catch (const coproc::process_error& e) {
    EXPECT_EQ(e.status().signal(), SIGABRT);
    EXPECT_NE(std::string(e.what()).find("SIGABRT"), std::string::npos) << e.what();
  }
}

TEST_F(run_test, check_with_merged_stderr_uses_the_tail_of_stdout) {
  auto r = run_cmd(helper("errline", "merged complaint", "exit", "1").merge_stderr());
  EXPECT_EQ(r.out, "merged complaint\n");
  try {
    r.check();
    ADD_FAILURE() << "check() did not throw";
  } catch (const coproc::process_error& e) {
    EXPECT_NE(e.stderr_tail().find("merged complaint"), std::string::npos) << e.what();
  }
}

TEST_F(run_test, huge_output_on_both_streams_while_feeding_stdin_does_not_deadlock) {
  // The child writes 100 MB to each of stdout and stderr (alternating chunks) before it
  // reads a byte of its 10 MB of stdin: only a run that feeds, drains and waits
  // concurrently finishes.
  const std::size_t out_size = 100u << 20;
  const std::size_t in_size = 10u << 20;
  auto r =
      run(coproc::async_run(
              helper("out-err", std::to_string(out_size), "cat-count").input(pattern(in_size))),
          120s);
  EXPECT_TRUE(r.success()) << r.status.to_string();
  const std::string count_line = std::to_string(in_size) + "\n";
  ASSERT_EQ(r.out.size(), out_size + count_line.size());
  EXPECT_EQ(pattern_mismatch(std::string_view(r.out).substr(0, out_size)), std::string::npos);
  EXPECT_EQ(r.out.substr(out_size), count_line);
  ASSERT_EQ(r.err.size(), out_size);
  EXPECT_EQ(pattern_mismatch(r.err), std::string::npos);
}

TEST_F(run_test, max_output_stops_the_capture_and_kills_the_child) {
  auto [ec, r] = run_tuple(helper("out", std::to_string(200u << 20)).max_output(1000));
  EXPECT_EQ(ec, coproc::errc::output_limit_exceeded);
  EXPECT_LE(r.out.size(), 1000u);
  EXPECT_EQ(pattern_mismatch(r.out), std::string::npos);
  EXPECT_TRUE(r.status.is_signaled()) << r.status.to_string();
}

TEST_F(run_test, max_output_is_not_exceeded_at_exactly_the_limit) {
  auto [ec, r] = run_tuple(helper("out", "1000").max_output(1000));
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(r.out, pattern(1000));
}

TEST_F(run_test, a_child_that_closes_stdout_early_and_keeps_running) {
  auto r = run_cmd(helper("close-stdout", "sleep", "100", "errline", "still running", "exit", "4"));
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "still running\n");
  EXPECT_EQ(r.status, exit_status::exited(4));
}

// --- timeout and cancellation --------------------------------------------------------------

TEST_F(run_test, timeout_escalates_to_sigkill_and_keeps_partial_output) {
  // The timeout races the child's start-up: if it fires before the child ignores SIGTERM
  // (no "ready" yet), this machine was slower than the timeout; try again with a longer one.
  for (auto timeout = std::chrono::milliseconds(100); timeout <= 6400ms; timeout *= 2) {
    auto [ec, r] = run_tuple(
        helper("errline", "partial err", "ignore-term").timeout(timeout).kill_grace(100ms));
    EXPECT_EQ(ec, coproc::errc::timed_out);
    if (r.out.empty() && timeout < 6400ms) continue;
    EXPECT_EQ(r.status, exit_status::signaled(SIGKILL));
    EXPECT_EQ(r.out, "ready\n");
    EXPECT_EQ(r.err, "partial err\n");
    break;
  }
}

TEST_F(run_test, timeout_stops_at_sigterm_when_that_suffices) {
  for (auto timeout = std::chrono::milliseconds(50); timeout <= 6400ms; timeout *= 2) {
    auto [ec, r] = run_tuple(helper("outline", "started", "sleep-forever").timeout(timeout));
    EXPECT_EQ(ec, coproc::errc::timed_out);
    EXPECT_EQ(r.status, exit_status::signaled(SIGTERM));
    if (r.out.empty() && timeout < 6400ms) continue;  // killed before it wrote: retry
    EXPECT_EQ(r.out, "started\n");
    break;
  }
}

TEST_F(run_test, timeout_throws_in_the_awaitable_form) {
  try {
    run_cmd(helper("sleep-forever").timeout(20ms));
    ADD_FAILURE() << "no exception";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), coproc::errc::timed_out);
  }
}

TEST_F(run_test, a_stdin_pipe_of_a_run_reads_end_of_file) {
  // Nobody else can reach it, so the run closes it (the child would wait for ever).
  auto r = run_cmd(helper("cat-count").std_in(coproc::stdio::pipe()));
  EXPECT_EQ(r.out, "0\n");
}

TEST_F(run_test, a_status_reaped_elsewhere_is_an_error_not_a_success) {
  // With SIGCHLD ignored the kernel reaps children itself: the status is lost (ECHILD).
  struct sigaction ign {
  }, old{};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGCHLD, &ign, &old);
  auto [ec, r] = run_tuple(helper("exit", "1"));
  ::sigaction(SIGCHLD, &old, nullptr);
  EXPECT_EQ(ec, boost::system::errc::no_child_process) << ec.message();
}

TEST_F(run_test, a_fast_child_is_not_affected_by_its_timeout) {
  auto [ec, r] = run_tuple(helper("outline", "quick").timeout(60s));
  EXPECT_FALSE(ec);
  EXPECT_EQ(r.out, "quick\n");
}

/// Runs `cmd` (which must `notify 3` once started) and cancels the run through a
/// cancellation signal once the child said it is ready. Returns the run's outcome and
/// whether every holder of fd 3 (the tree) was gone afterwards.
struct cancel_outcome {
  error_code ec;
  completed r;
  bool tree_gone = false;
};

class run_cancel_test : public run_test {
 protected:
  cancel_outcome run_and_cancel(command cmd) {
    raw_pipe witness;
    cmd.pass_fd(3, witness.write_end());
    auto reader = witness.reader(ex());
    auto out = run([&]() -> asio::awaitable<cancel_outcome> {
      asio::cancellation_signal sig;
      auto runner = [&]() -> asio::awaitable<std::tuple<error_code, completed>> {
        co_return co_await coproc::async_run(
            ex(), cmd, asio::bind_cancellation_slot(sig.slot(), tuple_awaitable));
      };
      // (Returns a value: Boost 1.81's `tuple && void` operator does not compile.)
      auto canceller = [&]() -> asio::awaitable<int> {
        auto ready = co_await reader.async_read_line();
        EXPECT_EQ(ready, "ready");
        witness.close_write();  // the child and grandchild hold their copies
        sig.emit(asio::cancellation_type::terminal);
        co_return 0;
      };
      auto [ec, r, unused] = co_await (runner() && canceller());
      (void)unused;
      cancel_outcome o;
      o.ec = ec;
      o.r = std::move(r);
      // Every holder of the witness is gone once the run completed?
      asio::steady_timer t(co_await asio::this_coro::executor, 20s);
      auto v = co_await (reader.async_read_all() || t.async_wait(asio::use_awaitable));
      o.tree_gone = v.index() == 0 && std::get<0>(v).empty();
      co_return o;
    }());
    // A grandchild that escaped is killed by pid (its first line of output).
    auto lines = split_lines(out.r.out);
    if (!lines.empty()) kill_quietly(std::atoi(lines[0].c_str()));
    return out;
  }
};

TEST_F(run_cancel_test, cancellation_kills_the_tree_and_reaps_the_child) {
  auto o = run_and_cancel(helper("grandchild", "notify", "3", "sleep-forever"));
  EXPECT_EQ(o.ec, asio::error::operation_aborted);
  EXPECT_EQ(o.r.status, exit_status::signaled(SIGTERM));
  EXPECT_TRUE(o.tree_gone) << "the grandchild survived the cancellation";
  EXPECT_EQ(split_lines(o.r.out).size(), 2u) << "output so far is kept: " << o.r.out;
}

TEST_F(run_cancel_test, cancellation_kills_the_tree_of_a_process_group) {
  auto o = run_and_cancel(helper("grandchild", "notify", "3", "sleep-forever").new_process_group());
  EXPECT_EQ(o.ec, asio::error::operation_aborted);
  EXPECT_EQ(o.r.status, exit_status::signaled(SIGTERM));
  EXPECT_TRUE(o.tree_gone) << "the grandchild survived the cancellation";
}

TEST_F(run_cancel_test, group_members_ignoring_sigterm_are_killed_after_their_leader_died) {
  // The grandchild ignores SIGTERM and holds the pipes; the child dies of the SIGTERM.
  auto o =
      run_and_cancel(helper("no-term", "grandchild", "term-default", "notify", "3", "sleep-forever")
                         .new_process_group()
                         .kill_grace(100ms)
                         .output_grace(100ms));
  EXPECT_EQ(o.ec, asio::error::operation_aborted);
  EXPECT_EQ(o.r.status, exit_status::signaled(SIGTERM));
  EXPECT_TRUE(o.tree_gone) << "the grandchild survived the cancellation";
}

TEST_F(run_cancel_test, cancellation_escalates_to_sigkill) {
  auto o = run_and_cancel(
      helper("no-term", "outline", "ready", "notify", "3", "sleep-forever").kill_grace(50ms));
  EXPECT_EQ(o.ec, asio::error::operation_aborted);
  EXPECT_EQ(o.r.status, exit_status::signaled(SIGKILL));
  EXPECT_EQ(o.r.out, "ready\n");
  EXPECT_TRUE(o.tree_gone);
}

TEST_F(run_test, a_timer_raced_against_async_run_cancels_it) {
  auto which = run([&]() -> asio::awaitable<std::size_t> {
    asio::steady_timer t(co_await asio::this_coro::executor, 20ms);
    auto v =
        co_await (coproc::async_run(helper("sleep-forever")) || t.async_wait(asio::use_awaitable));
    co_return v.index();
  }());
  EXPECT_EQ(which, 1u);
  // The fixture checks that the child was reaped.
}

TEST_F(run_test, grandchild_holding_the_pipes_does_not_hang_the_run) {
  auto r = run_cmd(helper("grandchild", "outline", "child done", "exit", "0").output_grace(100ms));
  auto lines = split_lines(r.out);
  ASSERT_GE(lines.size(), 1u);
  kill_quietly(std::atoi(lines[0].c_str()));
  EXPECT_TRUE(r.success());
  EXPECT_TRUE(r.output_truncated);
  EXPECT_EQ(lines.size(), 3u) << r.out;
  if (lines.size() == 3) {
    EXPECT_EQ(lines[2], "child done");
  }
}

// --- errors ---------------------------------------------------------------------------------

TEST_F(run_test, spawn_failure_is_reported_by_every_form) {
  auto [ec, r] = run_tuple(command{"/nonexistent/coproc-prog"});
  EXPECT_EQ(ec, boost::system::errc::no_such_file_or_directory);

  try {
    run_cmd(command{"/nonexistent/coproc-prog"});
    ADD_FAILURE() << "no exception";
  } catch (const coproc::spawn_error& e) {
    EXPECT_EQ(e.code(), boost::system::errc::no_such_file_or_directory);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/coproc-prog"), std::string::npos);
  } catch (const boost::system::system_error& e) {
    ADD_FAILURE() << "the awaitable form must throw spawn_error, got: " << e.what();
  }

  try {
    coproc::run(command{"/nonexistent/coproc-prog"});
    ADD_FAILURE() << "no exception";
  } catch (const coproc::spawn_error& e) {
    EXPECT_EQ(e.program(), "/nonexistent/coproc-prog");
    EXPECT_NE(std::string(e.what()).find("/nonexistent/coproc-prog"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(std::strerror(ENOENT)), std::string::npos);
  }
}

// --- other completion tokens and threads ------------------------------------------------------

TEST_F(run_test, blocking_run) {
  auto r = coproc::run(helper("outline", "blocking", "errline", "e", "exit", "7").input("x"));
  EXPECT_EQ(r.out, "blocking\n");
  EXPECT_EQ(r.err, "e\n");
  EXPECT_EQ(r.status, exit_status::exited(7));
  EXPECT_THROW(coproc::run(helper("sleep-forever").timeout(10ms)), boost::system::system_error);
}

TEST_F(run_test, callback_form) {
  std::optional<completed> got;
  coproc::async_run(ex(), helper("outline", "cb"), [&](error_code ec, completed r) {
    EXPECT_FALSE(ec);
    got = std::move(r);
  });
  ASSERT_TRUE(run_until([&] { return got.has_value(); }));
  EXPECT_EQ(got->out, "cb\n");
}

TEST_F(run_test, use_future_form) {
  auto guard = asio::make_work_guard(ctx());
  std::thread runner([&] { ctx().run(); });
  std::future<completed> f = coproc::async_run(ex(), helper("outline", "fut"), asio::use_future);
  std::future<completed> bad =
      coproc::async_run(ex(), command{"/nonexistent/coproc-prog"}, asio::use_future);
  bool ready = f.wait_for(30s) == std::future_status::ready &&
               bad.wait_for(30s) == std::future_status::ready;
  guard.reset();
  ctx().stop();
  runner.join();
  ASSERT_TRUE(ready);
  EXPECT_EQ(f.get().out, "fut\n");
  EXPECT_THROW(bad.get(), boost::system::system_error);
}

TEST_F(run_test, many_concurrent_runs_on_four_threads) {
  const int n = sanitized ? 100 : 300;
  auto results = run(
      [&]() -> asio::awaitable<std::vector<completed>> {
        auto ex = co_await asio::this_coro::executor;
        using op_type = decltype(coproc::async_run(ex, command{"x"}, asio::deferred));
        std::vector<op_type> ops;
        for (int i = 0; i < n; ++i)
          ops.push_back(
              coproc::async_run(ex,
                                helper("outline", "run " + std::to_string(i), "errline",
                                       std::to_string(i), "exit", std::to_string(i % 256)),
                                asio::deferred));
        auto [order, errors, values] =
            co_await asio::experimental::make_parallel_group(std::move(ops))
                .async_wait(asio::experimental::wait_for_all(), asio::use_awaitable);
        for (auto& ec : errors) EXPECT_FALSE(ec) << ec.message();
        co_return std::move(values);
      }(),
      120s, 4);
  ASSERT_EQ(results.size(), std::size_t(n));
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(results[i].out, "run " + std::to_string(i) + "\n");
    EXPECT_EQ(results[i].err, std::to_string(i) + "\n");
    EXPECT_EQ(results[i].status, exit_status::exited(i % 256));
  }
}

}  // namespace
