#include <coproc/merged_reader.hpp>

#include <boost/asio/compose.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/post.hpp>

#include <array>

namespace coproc {

struct merged_access {
  struct op {
    merged_reader* m;
    bool waited = false;
    bool posted = false;
    error_code result{};
    std::optional<tagged_line> line{};

    template <typename Self>
    void operator()(Self& self) {
      if (posted) return self.complete(result, std::move(line));
      next(self);
    }

    // One stream left: a plain read.
    template <typename Self>
    void operator()(Self& self, error_code ec, std::optional<std::string> text) {
      const source from = m->out_done_ ? source::err : source::out;
      if (ec) return finish(self, ec);
      if (!text) {
        (from == source::out ? m->out_done_ : m->err_done_) = true;
        return next(self);
      }
      line = tagged_line{from, std::move(*text)};
      finish(self, {});
    }

    // Both streams: the first to complete wins; a line the other one produced while being
    // cancelled is kept for the next call.
    template <typename Self>
    void operator()(Self& self, std::array<std::size_t, 2> order, error_code ec_out,
                    std::optional<std::string> out, error_code ec_err,
                    std::optional<std::string> err) {
      error_code ecs[2] = {ec_out, ec_err};
      std::optional<std::string>* texts[2] = {&out, &err};
      error_code first_error;
      for (std::size_t k = 0; k < 2; ++k) {
        const std::size_t i = order[k];
        const source from = i == 0 ? source::out : source::err;
        if (ecs[i]) {
          if (k == 0) first_error = ecs[i];
          continue;
        }
        if (!*texts[i]) {
          (i == 0 ? m->out_done_ : m->err_done_) = true;
          continue;
        }
        tagged_line t{from, std::move(**texts[i])};
        if (!line)
          line = std::move(t);
        else
          m->pending_ = std::move(t);
      }
      if (line) return finish(self, {});
      if (first_error) return finish(self, first_error);
      next(self);
    }

    template <typename Self>
    void next(Self& self) {
      if (m->pending_) {
        line = std::move(m->pending_);
        m->pending_.reset();
        return finish(self, {});
      }
      if (m->out_done_ && m->err_done_) return finish(self, {});
      waited = true;
      if (m->out_done_) return m->err_->async_read_line(std::move(self));
      if (m->err_done_) return m->out_->async_read_line(std::move(self));
      asio::experimental::make_parallel_group(m->out_->async_read_line(asio::deferred),
                                              m->err_->async_read_line(asio::deferred))
          .async_wait(asio::experimental::wait_for_one(), std::move(self));
    }

    template <typename Self>
    void finish(Self& self, error_code ec) {
      result = ec;
      if (waited) return self.complete(result, std::move(line));
      posted = true;
      asio::post(self.get_io_executor(), std::move(self));
    }
  };
};

void merged_reader::start(
    asio::any_completion_handler<void(error_code, std::optional<tagged_line>)> h) {
  asio::async_compose<decltype(h), void(error_code, std::optional<tagged_line>)>(
      merged_access::op{this}, h, out_->get_executor());
}

}  // namespace coproc
