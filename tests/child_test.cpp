#include <coproc/child.hpp>

#include <coproc/error.hpp>

#include "fixture.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_future.hpp>

#include <csignal>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

namespace {

using namespace coproc_test;
using namespace boost::asio::experimental::awaitable_operators;
using coproc::child;
using coproc::exit_status;
using coproc::stdio;

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

class child_test : public io_test {
 protected:
  /// Expects `cmd` to fail to spawn; returns the exception.
  std::optional<coproc::spawn_error> spawn_fails(const coproc::command& cmd) {
    try {
      child c = coproc::spawn(ex(), cmd);
      ADD_FAILURE() << "spawn succeeded, pid " << c.pid();
    } catch (const coproc::spawn_error& e) {
      return e;
    }
    return std::nullopt;
  }

  child spawn_piped(coproc::command c) {
    return coproc::spawn(
        ex(), std::move(c).std_in(stdio::pipe()).std_out(stdio::pipe()).std_err(stdio::pipe()));
  }
};

// --- spawning and waiting ------------------------------------------------------------------

TEST_F(child_test, spawn_and_wait_for_the_exit_code) {
  child c = coproc::spawn(ex(), helper("exit", "3"));
  EXPECT_GT(c.pid(), 0);
  EXPECT_EQ(c.program(), helper_path());
  EXPECT_FALSE(c.leads_group());
  EXPECT_FALSE(c.status().has_value());
  auto st = run(c.async_wait());
  EXPECT_EQ(st, exit_status::exited(3));
  EXPECT_EQ(c.status(), st);
  EXPECT_FALSE(c.running());
  EXPECT_GT(c.pid(), 0) << "pid stays valid after reaping";
}

TEST_F(child_test, async_spawn_in_a_coroutine) {
  auto st = run([&]() -> asio::awaitable<exit_status> {
    child c = co_await coproc::async_spawn(helper("exit", "0"));
    co_return co_await c.async_wait();
  }());
  EXPECT_TRUE(st.success());
}

TEST_F(child_test, async_spawn_with_an_executor_and_a_callback) {
  std::optional<child> got;
  error_code got_ec;
  coproc::async_spawn(ex(), helper("exit", "4"), [&](error_code ec, child c) {
    got_ec = ec;
    got.emplace(std::move(c));
  });
  ASSERT_TRUE(run_until([&] { return got.has_value(); }));
  EXPECT_FALSE(got_ec);
  EXPECT_EQ(run(got->async_wait()), exit_status::exited(4));
}

TEST_F(child_test, waiting_again_gives_the_same_status) {
  child c = coproc::spawn(ex(), helper("exit", "9"));
  EXPECT_EQ(run(c.async_wait()), exit_status::exited(9));
  EXPECT_EQ(run(c.async_wait()), exit_status::exited(9));
  EXPECT_EQ(c.wait(), exit_status::exited(9));
  EXPECT_EQ(c.try_wait(), exit_status::exited(9));
}

TEST_F(child_test, exit_codes_and_signals) {
  for (int code : {0, 1, 42, 255}) {
    child c = coproc::spawn(ex(), helper("exit", std::to_string(code)));
    EXPECT_EQ(run(c.async_wait()), exit_status::exited(code));
  }
  child abrt = coproc::spawn(ex(), helper("crash"));
  auto st = run(abrt.async_wait());
  EXPECT_TRUE(st.is_signaled());
  EXPECT_EQ(st.signal(), SIGABRT);
  child segv = coproc::spawn(ex(), helper("segv"));
  EXPECT_EQ(run(segv.async_wait()).signal(), SIGSEGV);
}

TEST_F(child_test, blocking_wait_needs_no_event_loop) {
  child c = coproc::spawn(ex(), helper("exit", "5"));
  EXPECT_EQ(c.wait(), exit_status::exited(5));
  EXPECT_EQ(c.status(), exit_status::exited(5));
  EXPECT_FALSE(c.running());
}

TEST_F(child_test, try_wait_never_blocks) {
  child c = spawn_piped(helper("wait-stdin", "exit", "6"));
  EXPECT_FALSE(c.try_wait().has_value()) << "the child blocks on stdin";
  EXPECT_TRUE(c.running());
  c.std_in().close();
  ASSERT_TRUE(wait_exited_no_reap(c.pid()));
  EXPECT_TRUE(c.running()) << "exited but not reaped still counts as running";
  EXPECT_EQ(c.try_wait(), exit_status::exited(6));
  EXPECT_FALSE(c.running());
}

TEST_F(child_test, async_wait_takes_callbacks_and_use_future) {
  child a = coproc::spawn(ex(), helper("exit", "1"));
  std::optional<exit_status> via_callback;
  a.async_wait([&](error_code ec, exit_status st) {
    EXPECT_FALSE(ec);
    via_callback = st;
  });
  ASSERT_TRUE(run_until([&] { return via_callback.has_value(); }));
  EXPECT_EQ(via_callback, exit_status::exited(1));

  child b = coproc::spawn(ex(), helper("exit", "2"));
  auto guard = asio::make_work_guard(ctx());
  std::thread runner([&] { ctx().run(); });
  std::future<exit_status> f = b.async_wait(asio::use_future);
  bool ready = f.wait_for(30s) == std::future_status::ready;
  guard.reset();
  ctx().stop();
  runner.join();
  ASSERT_TRUE(ready);
  EXPECT_EQ(f.get(), exit_status::exited(2));
}

TEST_F(child_test, a_child_can_be_moved_while_a_wait_is_outstanding) {
  std::optional<child> first;
  first.emplace(spawn_piped(helper("wait-stdin", "exit", "8")));
  std::optional<exit_status> st;
  first->async_wait([&](error_code ec, exit_status s) {
    EXPECT_FALSE(ec);
    st = s;
  });
  child second = std::move(*first);
  first.reset();
  EXPECT_TRUE(second.running());
  second.std_in().close();
  ASSERT_TRUE(run_until([&] { return st.has_value(); }));
  EXPECT_EQ(st, exit_status::exited(8));
  EXPECT_EQ(second.status(), exit_status::exited(8));
}

// --- spawn errors ------------------------------------------------------------------------------

TEST_F(child_test, missing_program_by_path_is_a_spawn_error) {
  auto e = spawn_fails(coproc::command{"/nonexistent/coproc-no-such-program", "x"});
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), boost::system::errc::no_such_file_or_directory);
  EXPECT_EQ(e->program(), "/nonexistent/coproc-no-such-program");
  std::string what = e->what();
  EXPECT_NE(what.find("/nonexistent/coproc-no-such-program"), std::string::npos) << what;
  EXPECT_NE(what.find(std::strerror(ENOENT)), std::string::npos) << what;
}

TEST_F(child_test, missing_program_in_path_is_a_spawn_error) {
  auto e = spawn_fails(coproc::command{"coproc-no-such-program-xyz"});
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), boost::system::errc::no_such_file_or_directory);
  std::string what = e->what();
  EXPECT_NE(what.find("coproc-no-such-program-xyz"), std::string::npos) << what;
  EXPECT_NE(what.find(std::strerror(ENOENT)), std::string::npos) << what;
}

TEST_F(child_test, non_executable_program_is_a_spawn_error) {
  temp_dir dir;
  write_file(dir / "not-executable", "#!/bin/sh\nexit 0\n");
  ::chmod((dir / "not-executable").c_str(), 0644);
  auto e = spawn_fails(coproc::command{(dir / "not-executable").string()});
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), boost::system::errc::permission_denied);
  std::string what = e->what();
  EXPECT_NE(what.find("not-executable"), std::string::npos) << what;
  EXPECT_NE(what.find(std::strerror(EACCES)), std::string::npos) << what;
}

TEST_F(child_test, a_directory_is_not_a_program) {
  temp_dir dir;
  auto e = spawn_fails(coproc::command{dir.path().string()});
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), boost::system::errc::permission_denied);
}

TEST_F(child_test, bad_working_directory_names_the_directory) {
  auto e = spawn_fails(helper("exit", "0").cwd("/nonexistent/coproc-dir"));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), boost::system::errc::no_such_file_or_directory);
  std::string what = e->what();
  EXPECT_NE(what.find("/nonexistent/coproc-dir"), std::string::npos) << what;
  EXPECT_NE(what.find(std::strerror(ENOENT)), std::string::npos) << what;
}

TEST_F(child_test, unopenable_stdio_file_names_the_path) {
  auto in = spawn_fails(helper("exit", "0").std_in(stdio::file("/nonexistent/coproc-in")));
  ASSERT_TRUE(in);
  EXPECT_NE(std::string(in->what()).find("/nonexistent/coproc-in"), std::string::npos)
      << in->what();
  auto out = spawn_fails(helper("exit", "0").std_out(stdio::file("/nonexistent/dir/out")));
  ASSERT_TRUE(out);
  EXPECT_NE(std::string(out->what()).find("/nonexistent/dir/out"), std::string::npos)
      << out->what();
}

TEST_F(child_test, spawn_with_error_code_returns_an_empty_child) {
  error_code ec;
  child c = coproc::spawn(ex(), coproc::command{"/nonexistent/prog"}, ec);
  EXPECT_EQ(ec, boost::system::errc::no_such_file_or_directory);
  EXPECT_EQ(c.pid(), -1);
  EXPECT_FALSE(c.running());
}

TEST_F(child_test, async_spawn_reports_errors_to_the_awaiter) {
  auto [ec, pid] = run([&]() -> asio::awaitable<std::pair<error_code, int>> {
    auto [ec, c] =
        co_await coproc::async_spawn(ex(), coproc::command{"/nonexistent/p"}, tuple_awaitable);
    co_return std::pair{ec, c.pid()};
  }());
  EXPECT_EQ(ec, boost::system::errc::no_such_file_or_directory);
  EXPECT_EQ(pid, -1);
  // (Through a wrapper: co_spawn needs a default-constructible result, which child is not.)
  EXPECT_THROW(run([&]() -> asio::awaitable<int> {
                 child c = co_await coproc::async_spawn(coproc::command{"/nonexistent/p"});
                 co_return c.pid();
               }()),
               coproc::spawn_error);
}

TEST_F(child_test, failed_spawns_leave_no_process_and_no_descriptor) {
  auto before = open_fds();
  for (int i = 0; i < 50; ++i) {
    error_code ec;
    child c = coproc::spawn(ex(),
                            coproc::command{"/nonexistent/p"}
                                .std_in(stdio::pipe())
                                .std_out(stdio::pipe())
                                .std_err(stdio::pipe()),
                            ec);
    EXPECT_TRUE(ec);
    child d = coproc::spawn(ex(), helper().cwd("/nonexistent/dir").std_out(stdio::pipe()), ec);
    EXPECT_TRUE(ec);
  }
  EXPECT_EQ(leftover_children(), "");
  EXPECT_EQ(open_fds().size(), before.size());
}

// --- signals ---------------------------------------------------------------------------------

TEST_F(child_test, terminate_interrupt_and_kill) {
  struct {
    void (child::*send)();
    int sig;
  } cases[] = {{&child::terminate, SIGTERM}, {&child::interrupt, SIGINT}, {&child::kill, SIGKILL}};
  for (auto [send, sig] : cases) {
    child c = spawn_piped(helper("outline", "ready", "sleep-forever"));
    EXPECT_EQ(run(c.std_out().async_read_line()), "ready");
    (c.*send)();
    EXPECT_EQ(run(c.async_wait()), exit_status::signaled(sig));
  }
  child c = spawn_piped(helper("outline", "ready", "sleep-forever"));
  EXPECT_EQ(run(c.std_out().async_read_line()), "ready");
  c.signal(SIGUSR1);
  EXPECT_EQ(run(c.async_wait()), exit_status::signaled(SIGUSR1));
}

TEST_F(child_test, signalling_a_reaped_child_does_nothing) {
  child c = coproc::spawn(ex(), helper("exit", "0"));
  run(c.async_wait());
  EXPECT_NO_THROW(c.kill());
  EXPECT_NO_THROW(c.signal_tree(SIGKILL));
  EXPECT_EQ(c.status(), exit_status::exited(0));
}

TEST_F(child_test, cancelling_async_wait_does_not_kill_the_child) {
  child c = spawn_piped(helper("echo"));
  asio::cancellation_signal sig;
  std::optional<error_code> result;
  c.async_wait(
      asio::bind_cancellation_slot(sig.slot(), [&](error_code ec, exit_status) { result = ec; }));
  ctx().poll();
  sig.emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(run_until([&] { return result.has_value(); }));
  EXPECT_EQ(*result, asio::error::operation_aborted);

  // Still alive and working: it echoes.
  auto echoed = run([&]() -> asio::awaitable<std::string> {
    std::string ping = "ping\n";
    co_await c.std_in().async_write(asio::buffer(ping));
    co_return (co_await c.std_out().async_read_line()).value_or("<eof>");
  }());
  EXPECT_EQ(echoed, "ping");
  EXPECT_TRUE(c.running());
  c.std_in().close();
  EXPECT_EQ(run(c.async_wait()), exit_status::exited(0));
}

TEST_F(child_test, a_timer_raced_against_async_wait_leaves_the_child_running) {
  child c = spawn_piped(helper("wait-stdin"));
  auto which = run([&]() -> asio::awaitable<std::size_t> {
    asio::steady_timer t(co_await asio::this_coro::executor, 20ms);
    auto v = co_await (c.async_wait() || t.async_wait(asio::use_awaitable));
    co_return v.index();
  }());
  EXPECT_EQ(which, 1u);
  EXPECT_TRUE(c.running());
  EXPECT_FALSE(c.try_wait().has_value());
  c.std_in().close();
  EXPECT_EQ(run(c.async_wait()), exit_status::exited(0));
}

// --- process trees ---------------------------------------------------------------------------

/// Spawns helper `grandchild` + `then...` with a witness pipe passed as fd 3: the pipe reads
/// end-of-file once the child and the grandchild are both gone.
struct tree {
  raw_pipe witness;
  std::optional<child> c;
  int grandchild = -1;
};

class child_tree_test : public child_test {
 protected:
  void start(tree& t, coproc::command cmd) {
    t.c.emplace(coproc::spawn(
        ex(), std::move(cmd).pass_fd(3, t.witness.write_end()).std_out(stdio::pipe())));
    t.witness.close_write();
    auto lines = run([&]() -> asio::awaitable<std::vector<std::string>> {
      std::vector<std::string> v;
      for (int i = 0; i < 2; ++i)
        v.push_back((co_await t.c->std_out().async_read_line()).value_or(""));
      co_return v;
    }());
    ASSERT_EQ(lines.size(), 2u);
    t.grandchild = std::atoi(lines[0].c_str());
    ASSERT_GT(t.grandchild, 0);
    ASSERT_EQ(lines[1], "ready");
  }
  /// True when every holder of the witness pipe is gone (within the deadline).
  bool tree_gone(tree& t) {
    auto r = t.witness.reader(ex());
    auto [ec, rest] = run(r.async_read_all(tuple_awaitable), 30s);
    return ec == error_code{} && rest.empty();
  }
};

TEST_F(child_tree_test, signal_tree_reaches_grandchildren_without_a_process_group) {
  tree t;
  start(t, helper("grandchild", "sleep-forever"));
  EXPECT_FALSE(t.c->leads_group());
  t.c->signal_tree(SIGKILL);
  EXPECT_TRUE(tree_gone(t)) << "the grandchild survived";
  EXPECT_EQ(run(t.c->async_wait()), exit_status::signaled(SIGKILL));
  kill_quietly(t.grandchild);
}

TEST_F(child_tree_test, signal_tree_reaches_grandchildren_through_the_process_group) {
  tree t;
  start(t, helper("grandchild", "sleep-forever").new_process_group());
  EXPECT_TRUE(t.c->leads_group());
  t.c->signal_tree(SIGTERM);
  EXPECT_TRUE(tree_gone(t)) << "the grandchild survived";
  EXPECT_EQ(run(t.c->async_wait()), exit_status::signaled(SIGTERM));
  kill_quietly(t.grandchild);
}

TEST_F(child_tree_test, signal_reaches_only_the_child) {
  tree t;
  start(t, helper("grandchild", "sleep-forever").new_process_group());
  t.c->kill();
  EXPECT_EQ(run(t.c->async_wait()), exit_status::signaled(SIGKILL));
  EXPECT_EQ(::kill(t.grandchild, 0), 0) << "the grandchild must still be alive";
  kill_quietly(t.grandchild);
  EXPECT_TRUE(tree_gone(t));
}

TEST_F(child_tree_test, new_process_group_and_new_session) {
  child g = coproc::spawn(ex(), helper("pgid", "sid").new_process_group().std_out(stdio::pipe()));
  auto glines = split_lines(run(g.std_out().async_read_all()));
  ASSERT_EQ(glines.size(), 2u);
  EXPECT_EQ(glines[0], std::to_string(g.pid())) << "the child leads its group";
  EXPECT_EQ(glines[1], std::to_string(::getsid(0))) << "but stays in our session";
  run(g.async_wait());

  child s = coproc::spawn(ex(), helper("pgid", "sid").new_session().std_out(stdio::pipe()));
  EXPECT_TRUE(s.leads_group());
  auto slines = split_lines(run(s.std_out().async_read_all()));
  ASSERT_EQ(slines.size(), 2u);
  EXPECT_EQ(slines[0], std::to_string(s.pid()));
  EXPECT_EQ(slines[1], std::to_string(s.pid()));
  run(s.async_wait());

  child d = coproc::spawn(ex(), helper("pgid").std_out(stdio::pipe()));
  EXPECT_EQ(run(d.std_out().async_read_all()), std::to_string(::getpgrp()) + "\n");
  run(d.async_wait());
}

// --- ownership -------------------------------------------------------------------------------

TEST_F(child_test, destroying_a_running_child_kills_and_reaps_it) {
  int pid = -1;
  {
    child c = spawn_piped(helper("outline", "ready", "sleep-forever"));
    pid = c.pid();
    EXPECT_EQ(run(c.std_out().async_read_line()), "ready");
  }
  // Destruction must not block; the reaper collects it as the context runs.
  EXPECT_TRUE(run_until([&] { return reaped(pid); })) << "pid " << pid << " was not reaped";
}

TEST_F(child_test, destroying_a_child_of_a_group_kills_the_group) {
  tree t;
  {
    child c = coproc::spawn(ex(), helper("grandchild", "sleep-forever")
                                      .new_process_group()
                                      .pass_fd(3, t.witness.write_end())
                                      .std_out(stdio::pipe()));
    t.witness.close_write();
    EXPECT_EQ(run(c.std_out().async_read_line()).has_value(), true);
    auto ready = run(c.std_out().async_read_line());
    EXPECT_EQ(ready, "ready");
  }
  auto r = t.witness.reader(ex());
  auto [ec, rest] = run(r.async_read_all(tuple_awaitable), 30s);
  EXPECT_FALSE(ec);
  EXPECT_EQ(rest, "");
}

TEST_F(child_test, destroying_the_context_reaps_killed_children) {
  int pid = -1;
  {
    asio::io_context local;
    {
      child c = coproc::spawn(local.get_executor(), helper("sleep-forever").std_out(stdio::null()));
      pid = c.pid();
    }
    // The context never ran: its shutdown must reap the killed child.
  }
  EXPECT_TRUE(reaped(pid)) << "pid " << pid << " left as a zombie or still running";
}

TEST_F(child_test, detach_lets_the_child_outlive_its_handle) {
  int pid = -1;
  std::optional<coproc::pipe_writer> in;
  std::optional<coproc::pipe_reader> out;
  {
    child c = spawn_piped(helper("echo", "exit", "0"));
    pid = c.pid();
    c.detach();
    auto [ec, st] = run(c.async_wait(tuple_awaitable));
    EXPECT_EQ(ec, coproc::errc::not_running);
    in.emplace(std::move(c.std_in()));
    out.emplace(std::move(c.std_out()));
  }
  // The handle is gone; the child still answers.
  auto echoed = run([&]() -> asio::awaitable<std::string> {
    std::string ping = "still here\n";
    co_await in->async_write(asio::buffer(ping));
    co_return (co_await out->async_read_line()).value_or("<eof>");
  }());
  EXPECT_EQ(echoed, "still here");
  in->close();
  EXPECT_FALSE(run(out->async_read_line()).has_value());
  out.reset();
  in.reset();
  // A detached child never keeps the event loop busy: it is reaped, once it has exited, by
  // the next spawn on the same context.
  EXPECT_TRUE(run_until([&] { return exited_unreaped(pid); })) << "pid " << pid << " did not exit";
  EXPECT_FALSE(reaped(pid)) << "nothing has polled the detached children yet";
  child next = spawn_piped(helper("exit", "0"));
  EXPECT_TRUE(reaped(pid)) << "pid " << pid << " was not reaped by the next spawn";
  EXPECT_EQ(run(next.async_wait()), exit_status::exited(0));
}

TEST_F(child_test, a_detached_child_does_not_keep_the_event_loop_running) {
  child c = spawn_piped(helper("readline", "exit", "0"));
  const int pid = c.pid();
  c.detach();
  // Nothing else is pending: run() returns although the child is alive.
  ctx().restart();
  ctx().run();
  EXPECT_FALSE(reaped(pid));
  c.std_in().close();  // the child reads end-of-file and exits
  EXPECT_TRUE(run_until([&] { return exited_unreaped(pid); }));
  child next = spawn_piped(helper("exit", "0"));
  EXPECT_TRUE(reaped(pid));
  EXPECT_EQ(run(next.async_wait()), exit_status::exited(0));
}

TEST_F(child_test, die_with_parent_kills_the_child_when_the_spawning_thread_exits) {
  std::optional<child> c;
  std::thread spawner(
      [&] { c.emplace(coproc::spawn(ex(), helper("sleep-forever").die_with_parent())); });
  spawner.join();
  ASSERT_TRUE(c);
  EXPECT_EQ(run(c->async_wait()), exit_status::signaled(SIGKILL));
}

// --- pipes -----------------------------------------------------------------------------------

TEST_F(child_test, streams_not_configured_as_pipes_are_closed) {
  child c = coproc::spawn(ex(), helper("exit", "0").std_out(stdio::null()));
  EXPECT_FALSE(c.std_in().is_open());
  EXPECT_FALSE(c.std_out().is_open());
  EXPECT_FALSE(c.std_err().is_open());
  run(c.async_wait());

  child m = coproc::spawn(
      ex(), helper("outline", "o", "errline", "e").std_out(stdio::pipe()).merge_stderr());
  EXPECT_TRUE(m.std_out().is_open());
  EXPECT_FALSE(m.std_err().is_open()) << "merged stderr shares std_out()";
  EXPECT_EQ(run(m.std_out().async_read_all()), "o\ne\n");
  run(m.async_wait());
}

TEST_F(child_test, stdout_and_stderr_pipes_are_separate) {
  child c = spawn_piped(helper("outline", "to out", "errline", "to err"));
  c.std_in().close();
  auto [out, err] = run([&]() -> asio::awaitable<std::tuple<std::string, std::string>> {
    co_return co_await (c.std_out().async_read_all() && c.std_err().async_read_all());
  }());
  EXPECT_EQ(out, "to out\n");
  EXPECT_EQ(err, "to err\n");
  run(c.async_wait());
}

TEST_F(child_test, writing_to_an_exited_child_is_broken_pipe_not_sigpipe) {
  child c = spawn_piped(helper("exit", "0"));
  EXPECT_EQ(run(c.async_wait()), exit_status::exited(0));
  std::string data(1 << 16, 'x');
  auto [ec, n] = run(c.std_in().async_write(asio::buffer(data), tuple_awaitable));
  EXPECT_EQ(ec, asio::error::broken_pipe);
  // Reaching this line means the test process survived: no SIGPIPE.
}

TEST_F(child_test, a_child_that_closes_stdout_early_keeps_running) {
  child c = spawn_piped(helper("close-stdout", "errline", "after", "exit", "0"));
  auto out = run(c.std_out().async_read_all());
  EXPECT_EQ(out, "");
  EXPECT_TRUE(c.std_out().eof());
  EXPECT_TRUE(c.running());
  EXPECT_FALSE(c.try_wait().has_value()) << "it waits for stdin to close";
  c.std_in().close();
  EXPECT_EQ(run(c.std_err().async_read_all()), "after\n");
  EXPECT_EQ(run(c.async_wait()), exit_status::exited(0));
}

TEST_F(child_test, a_child_writing_to_a_closed_pipe_dies_of_sigpipe) {
  child c = spawn_piped(helper("outline", "ready", "out", std::to_string(64u << 20)));
  EXPECT_EQ(run(c.std_out().async_read_line()), "ready");
  c.std_out().close();
  EXPECT_EQ(run(c.async_wait()), exit_status::signaled(SIGPIPE))
      << "the child must start with SIGPIPE at its default (exit 124 means ignored)";
}

}  // namespace
