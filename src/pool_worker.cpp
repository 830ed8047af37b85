#include "pool_worker.hpp"

#include <coproc/pipe.hpp>
#include <coproc/process.hpp>
#include <coproc/process_pool.hpp>

#include "process_internal.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <unordered_map>

namespace coproc::detail {

namespace {

std::int64_t now_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::uint64_t resident_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

void put_u32(std::string& s, std::size_t at, std::uint32_t v) { std::memcpy(s.data() + at, &v, 4); }
void put_u64(std::string& s, std::size_t at, std::uint64_t v) { std::memcpy(s.data() + at, &v, 8); }

void append_control(std::string& out, std::uint32_t tag, std::string_view payload) {
  const std::size_t at = out.size();
  out.append(8, '\0');
  out.append(payload);
  put_u32(out, at, static_cast<std::uint32_t>(payload.size()));
  put_u32(out, at + 4, tag);
}

class worker_loop {
 public:
  worker_loop(int fd, worker_progress* progress, const worker_config& cfg)
      : fd_(fd), progress_(progress), cfg_(cfg), born_(now_ns()) {
    in_.resize(1 << 16);
    out_.reserve(1 << 16);
  }

  [[noreturn]] void run() {
    for (;;) {
      std::string_view body;
      std::uint32_t tag = 0;
      if (!next_frame(tag, body)) {
        flush();
        if (!fill()) leave(0);  // the pool closed its end: done
        continue;
      }
      if (tag != task_tag) continue;  // nothing else is sent to a running worker
      if (should_retire()) retire(0);
      run_task(body);
      if (cfg_.max_tasks && ++tasks_ >= cfg_.max_tasks) retire(last_seq_);
    }
  }

 private:
  // A complete frame at the read position, if there is one.
  bool next_frame(std::uint32_t& tag, std::string_view& body) {
    if (end_ - pos_ < 8) return false;
    std::uint32_t size;
    std::memcpy(&size, in_.data() + pos_, 4);
    std::memcpy(&tag, in_.data() + pos_ + 4, 4);
    if (end_ - pos_ < 8 + size) {
      if (8 + size > in_.size()) {  // a frame larger than the buffer: grow to hold it
        std::memmove(in_.data(), in_.data() + pos_, end_ - pos_);
        end_ -= pos_;
        pos_ = 0;
        in_.resize(8 + size);
      }
      return false;
    }
    body = std::string_view(in_.data() + pos_ + 8, size);
    pos_ += 8 + size;
    return true;
  }

  // Reads more; false at end of stream.
  bool fill() {
    if (pos_ == end_) {
      pos_ = end_ = 0;
    } else if (pos_ > 0 && in_.size() - end_ < 4096) {
      std::memmove(in_.data(), in_.data() + pos_, end_ - pos_);
      end_ -= pos_;
      pos_ = 0;
    }
    for (;;) {
      const ssize_t r = ::read(fd_, in_.data() + end_, in_.size() - end_);
      if (r > 0) {
        end_ += static_cast<std::size_t>(r);
        return true;
      }
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
  }

  void flush() {
    if (out_.empty()) return;
    if (!write_all(fd_, out_.data(), out_.size())) leave(0);  // the pool is gone
    out_.clear();
  }

  void run_task(std::string_view body) {
    std::uint64_t seq;
    std::memcpy(&seq, body.data(), 8);
    std::uint64_t invoker_address;
    std::memcpy(&invoker_address, body.data() + 8, 8);
    body.remove_prefix(16);
    __atomic_store_n(&progress_->started, seq, __ATOMIC_RELEASE);
    const std::size_t mark = out_.size();
    out_.append(result_header, '\0');
    const std::int64_t t0 = now_ns();
    std::uint32_t tag;
    try {
      task_invoker invoke = nullptr;
      if (invoker_address) {
        invoke = reinterpret_cast<task_invoker>(invoker_address);
      } else {
        std::uint16_t n;
        std::memcpy(&n, body.data(), 2);
        const std::string_view name = body.substr(2, n);
        body.remove_prefix(2 + n);
        invoke = lookup(name);
      }
      tag = invoke(body, out_);
    } catch (...) {
      out_.resize(mark + result_header);
      encode_to(out_, encode_exception(std::current_exception()));
      tag = exception_tag;
    }
    const std::int64_t t1 = now_ns();
    if (out_.size() - mark - 8 > cfg_.max_message) {
      const std::size_t n = out_.size() - mark - result_header;
      out_.resize(mark + result_header);
      encode_to(out_,
                encode_exception(std::make_exception_ptr(boost::system::system_error(
                    make_error_code(errc::message_too_large),
                    "pool task result of " + std::to_string(n) +
                        " bytes exceeds max_message_size " + std::to_string(cfg_.max_message)))));
      tag = exception_tag;
    }
    put_u32(out_, mark, static_cast<std::uint32_t>(out_.size() - mark - 8));
    put_u32(out_, mark + 4, tag);
    put_u64(out_, mark + 8, seq);
    put_u64(out_, mark + 16, static_cast<std::uint64_t>(t1 - t0));
    __atomic_store_n(&progress_->finished, seq, __ATOMIC_RELEASE);
    last_seq_ = seq;
    // Results of quick tasks wait for the next flush (when the input runs dry); a slow task's
    // result goes at once, so a caller never waits on a batch behind it.
    if (cfg_.flush_each || t1 - t0 > 20'000 || out_.size() >= (1u << 16) || end_ - pos_ < 8)
      flush();
  }

  task_invoker lookup(std::string_view name) {
    auto it = cache_.find(std::string(name));
    if (it != cache_.end()) return it->second;
    const auto* f = find_function(name);
    if (!f)
      throw std::runtime_error("coproc: function \"" + std::string(name) +
                               "\" is not registered in the spawned worker");
    cache_.emplace(std::string(name), f->invoke_task);
    return f->invoke_task;
  }

  bool should_retire() {
    if (cfg_.max_age_ns && now_ns() - born_ > cfg_.max_age_ns) return true;
    if (cfg_.max_memory) {
      const std::int64_t t = now_ns();
      if (t - last_rss_check_ > 1'000'000) {
        last_rss_check_ = t;
        if (resident_bytes() > cfg_.max_memory) return true;
      }
    }
    return false;
  }

  // Tells the pool which task ran last (later ones go to other workers) and exits.
  [[noreturn]] void retire(std::uint64_t last) {
    std::string payload(8, '\0');
    put_u64(payload, 0, last ? last : last_seq_);
    append_control(out_, retire_tag, payload);
    flush();
    leave(0);
  }

  int fd_;
  worker_progress* progress_;
  const worker_config& cfg_;
  std::int64_t born_;
  std::string in_;
  std::size_t pos_ = 0;
  std::size_t end_ = 0;
  std::string out_;
  std::uint64_t tasks_ = 0;
  std::uint64_t last_seq_ = 0;
  std::int64_t last_rss_check_ = 0;
  std::unordered_map<std::string, task_invoker> cache_;
};

[[noreturn]] void init_failed(int fd, std::exception_ptr e) {
  std::string out;
  append_control(out, init_failed_tag, encode(encode_exception(e)));
  write_all(fd, out.data(), out.size());
  leave(1);
}

void send_ready(int fd) {
  std::string out;
  append_control(out, ready_tag, {});
  if (!write_all(fd, out.data(), out.size())) leave(0);
}

}  // namespace

void run_pool_worker(int fd, worker_progress* progress, const worker_config& cfg,
                     const std::function<void()>& init) {
  set_process_name(cfg.name);
  try {
    if (init) init();
  } catch (...) {
    init_failed(fd, std::current_exception());
  }
  send_ready(fd);
  worker_loop(fd, progress, cfg).run();
}

void run_spawned_pool_worker(int fd, std::string_view config) {
  worker_config cfg;
  try {
    cfg = decode<worker_config>(config);
  } catch (...) {
    init_failed(fd, std::current_exception());
  }
  void* page = ::mmap(nullptr, sizeof(worker_progress), PROT_READ | PROT_WRITE, MAP_SHARED, 4, 0);
  if (page == MAP_FAILED)
    init_failed(
        fd, std::make_exception_ptr(std::system_error(errno, std::generic_category(),
                                                      "coproc worker: mapping its progress page")));
  ::close(4);
  std::function<void()> init;
  if (!cfg.initializer.empty()) {
    init = [&cfg] {
      const auto req = decode<call_request>(cfg.initializer);
      const auto* f = find_function(req.function);
      if (!f)
        throw std::runtime_error("coproc: initializer \"" + req.function +
                                 "\" is not registered in the spawned worker");
      std::string frame;
      f->invoke(req.args, frame);
      std::uint32_t tag;
      std::memcpy(&tag, frame.data() + 4, 4);
      if (tag == exception_tag)
        std::rethrow_exception(
            decode_exception(decode<std::string>(std::string_view(frame).substr(8))));
    };
  }
  run_pool_worker(fd, static_cast<worker_progress*>(page), cfg, init);
}

}  // namespace coproc::detail
