#include "run_engine.hpp"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>

#include <csignal>

namespace coproc::detail {

void run_engine::start(std::vector<child> children, pipe_reader* out, pipe_reader* err,
                       asio::cancellation_slot slot, done_fn done) {
  children_ = std::move(children);
  done_ = std::move(done);
  slot_ = slot;
  auto self = shared_from_this();
  // Installed before returning to the initiator, so no cancellation can be missed.
  if (slot_.is_connected()) {
    slot_.assign([this, self](asio::cancellation_type) {
      asio::dispatch(strand_, [this, self] { cancel(asio::error::operation_aborted); });
    });
  }
  asio::dispatch(strand_, [this, self, out, err] {
    if (s_.timeout) {
      timeout_.expires_after(*s_.timeout);
      timeout_.async_wait([this, self](error_code ec) {
        if (!ec) cancel(make_error_code(errc::timed_out));
      });
    }
    if (out) read(out, &this->out);
    if (err) read(err, &this->err);
    for (auto& c : children_) {
      ++pending_;
      c.async_wait(asio::bind_executor(strand_, [this, self](error_code ec, exit_status) {
        // A wait fails only when the status is lost (reaped elsewhere): report it.
        if (ec && !ec_) ec_ = ec;
        if (all_exited()) {
          // No ladder_.cancel(): a started ladder goes on for the group or the descendants
          // that may outlive the child.
          if (readers_left_ > 0) {
            // A grandchild may hold the pipes open for ever: give them a bounded grace.
            grace_.expires_after(s_.output_grace);
            grace_.async_wait([this, self](error_code ec) {
              if (ec || readers_left_ == 0) return;
              truncated = true;
              for (auto* r : readers_) r->close();
            });
          }
        }
        task_done();
      }));
    }
  });
}

bool run_engine::all_exited() const {
  for (const auto& c : children_)
    if (c.running()) return false;
  return true;
}

void run_engine::read(pipe_reader* r, std::string* into) {
  ++pending_;
  ++readers_left_;
  readers_.push_back(r);
  auto self = shared_from_this();
  r->async_read_all(
      s_.max_output,
      asio::bind_executor(strand_, [this, self, into](error_code ec, std::string data) {
        *into = std::move(data);
        --readers_left_;
        if (readers_left_ == 0) grace_.cancel();
        if (ec == errc::output_limit_exceeded) cancel(ec);
        // Other read errors (a closed pipe after the grace period) are not
        // the run's failure: the status says what happened.
        task_done();
      }));
}

void run_engine::signal_all(int sig) {
  for (auto& c : children_) {
    try {
      c.signal_tree(sig);
    } catch (const std::exception&) {
      // The child is gone (or unreachable); the wait reports what happened.
    }
  }
}

void run_engine::cancel(error_code why) {
  if (finished_) return;
  if (!ec_) ec_ = why;
  if (all_exited()) {
    // Only the output grace is left: stop reading now. Process groups still get the
    // ladder's last step when the run completes.
    for (auto* r : readers_) r->close();
    cancelling_ = true;
    return;
  }
  if (cancelling_) return;
  cancelling_ = true;
  if (s_.kill_grace <= command::duration::zero()) return signal_all(SIGKILL);
  signal_all(SIGTERM);
  auto self = shared_from_this();
  ladder_.expires_after(s_.kill_grace);
  ladder_.async_wait([this, self](error_code ec) {
    if (!ec && !finished_) signal_all(SIGKILL);
  });
}

void run_engine::task_done() {
  if (--pending_ > 0) return;
  finished_ = true;
  // A cancelled run leaves nothing of its groups behind, even members that ignored SIGTERM
  // after their leader died of it.
  if (cancelling_) signal_all(SIGKILL);
  timeout_.cancel();
  ladder_.cancel();
  grace_.cancel();
  if (slot_.is_connected()) slot_.clear();
  auto done = std::move(done_);
  done(ec_, *this);
}

}  // namespace coproc::detail
