#include <coproc/pipeline.hpp>

#include <coproc/error.hpp>
#include <coproc/run.hpp>

#include "child_state.hpp"
#include "run_engine.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_future.hpp>

#include <fcntl.h>
#include <unistd.h>

namespace coproc {
namespace {

struct fd_closer {
  int fd = -1;
  ~fd_closer() {
    if (fd >= 0) ::close(fd);
  }
};

std::vector<child> spawn_stages(const executor_type& ex, const pipeline& p, error_code& ec,
                                std::string& what, std::string& failed_program) {
  std::vector<child> stages;
  const auto& cmds = p.stages();
  if (cmds.empty()) {
    ec = {EINVAL, boost::system::system_category()};
    what = "spawn pipeline: no stages";
    return stages;
  }
  fd_closer prev_read;  // read end of the pipe into the current stage
  int pgid = 0;
  for (std::size_t i = 0; i < cmds.size(); ++i) {
    command c = cmds[i];
    fd_closer next_read, next_write;
    if (i > 0) c.std_in(stdio::fd(prev_read.fd));
    if (i + 1 < cmds.size()) {
      int fds[2];
      if (pipe2(fds, O_CLOEXEC) != 0) {
        ec = {errno, boost::system::system_category()};
        what = "spawn pipeline: creating a pipe: " + ec.message();
        break;
      }
      next_read.fd = fds[0];
      next_write.fd = fds[1];
      c.std_out(stdio::fd(next_write.fd));
    }
    if (i == 0) c.new_process_group();
    child ch = detail::spawn_in_group(ex, c, pgid, ec, what);
    if (ec) {
      failed_program = c.program();
      break;
    }
    if (i == 0) pgid = ch.pid();
    stages.push_back(std::move(ch));
    std::swap(prev_read.fd, next_read.fd);
  }
  if (ec) stages.clear();  // destroying them kills and reaps the stages already started
  return stages;
}

}  // namespace

std::vector<child> spawn(const executor_type& ex, const pipeline& p) {
  error_code ec;
  std::string what, failed;
  auto stages = spawn_stages(ex, p, ec, what, failed);
  if (ec) throw spawn_error(ec, failed, what);
  return stages;
}

bool pipeline_result::success() const noexcept {
  for (auto s : statuses)
    if (!s.success()) return false;
  return !statuses.empty();
}

const pipeline_result& pipeline_result::check() const& {
  for (std::size_t i = 0; i < statuses.size(); ++i)
    if (!statuses[i].success())
      throw process_error(
          programs[i], statuses[i], err,
          "stage " + std::to_string(i + 1) + " of " + std::to_string(statuses.size()));
  return *this;
}

pipeline_result&& pipeline_result::check() && {
  static_cast<const pipeline_result&>(*this).check();
  return std::move(*this);
}

namespace detail {

void throw_spawn_failure(const error_code& ec, const spawn_failure& failure) {
  if (!failure.message.empty()) throw spawn_error(ec, failure.program, failure.message);
  throw boost::system::system_error(ec);
}

void start_run_pipeline(const executor_type& ex, pipeline p,
                        asio::any_completion_handler<void(error_code, pipeline_result)> h,
                        std::shared_ptr<spawn_failure> failure) {
  pipeline_result result;
  auto& cmds = p.stages();
  for (auto& c : cmds) result.programs.push_back(c.program());
  auto fail = [&](error_code ec) {
    asio::post(ex, asio::append(std::move(h), ec, std::move(result)));
  };
  if (cmds.empty()) return fail({EINVAL, boost::system::system_category()});

  // One stderr pipe shared by every stage that does not set its own.
  auto engine_settings =
      run_engine::settings{cmds.front().limits().max_output, cmds.front().timeout_value(),
                           cmds.front().kill_grace_value(), cmds.front().output_grace_value()};
  auto engine = std::make_shared<run_engine>(ex, engine_settings);
  fd_closer err_write;
  // A stage's own stderr pipe would have no reader: it joins the shared one.
  auto shared_err = [](const command& c) {
    return !c.std_err_config() || c.std_err_config()->type() == stdio::kind::pipe;
  };
  bool need_err = false;
  for (auto& c : cmds) need_err |= shared_err(c);
  if (need_err) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return fail({errno, boost::system::system_category()});
    err_write.fd = fds[1];
    detail::grow_pipe(fds[0], cmds.front().limits().pipe_size);
    engine->owned_readers.push_back(
        std::make_unique<pipe_reader>(ex, fds[0], cmds.front().limits().max_line));
    for (auto& c : cmds)
      if (shared_err(c)) c.std_err(stdio::fd(err_write.fd));
  }
  if (!cmds.front().std_in_config()) cmds.front().std_in(stdio::null());
  if (!cmds.back().std_out_config()) cmds.back().std_out(stdio::pipe());

  error_code ec;
  std::string what, failed;
  auto stages = spawn_stages(ex, p, ec, what, failed);
  if (ec) {
    if (failure) *failure = {failed, what};
    return fail(ec);
  }
  ::close(std::exchange(err_write.fd, -1));

  pipe_reader* out = stages.back().std_out().is_open() ? &stages.back().std_out() : nullptr;
  pipe_reader* err = need_err ? engine->owned_readers.front().get() : nullptr;
  auto slot = asio::get_associated_cancellation_slot(h);
  auto work =
      asio::prefer(asio::get_associated_executor(h, ex), asio::execution::outstanding_work.tracked);
  auto hp = std::make_shared<decltype(h)>(std::move(h));
  engine->start(std::move(stages), out, err, slot,
                [ex, hp, r = std::move(result), work](error_code ec, run_engine& e) mutable {
                  for (auto& c : e.children())
                    r.statuses.push_back(c.status().value_or(exit_status{}));
                  r.out = std::move(e.out);
                  r.err = std::move(e.err);
                  r.output_truncated = e.truncated;
                  asio::post(ex, asio::append(std::move(*hp), ec, std::move(r)));
                });
}

}  // namespace detail

pipeline_result run(pipeline p) {
  asio::io_context ctx(1);
  auto failure = std::make_shared<detail::spawn_failure>();
  error_code ec;
  pipeline_result result;
  detail::start_run_pipeline(
      ctx.get_executor(), std::move(p),
      [&](error_code e, pipeline_result r) {
        ec = e;
        result = std::move(r);
      },
      failure);
  ctx.run();
  if (ec) detail::throw_spawn_failure(ec, *failure);
  return result;
}

}  // namespace coproc
