#include <coproc/process_pool.hpp>

#include "child_state.hpp"
#include "pool_worker.hpp"
#include "process_internal.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>

namespace coproc {

std::size_t available_cpus() {
  std::size_t n = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0) n = static_cast<std::size_t>(CPU_COUNT(&set));
  if (n == 0) n = std::max(1u, std::thread::hardware_concurrency());
  // cgroup v2: "max 100000" or "QUOTA PERIOD".
  std::ifstream f("/sys/fs/cgroup/cpu.max");
  std::string quota;
  long long period = 0;
  if (f >> quota >> period && quota != "max" && period > 0) {
    const long long q = std::atoll(quota.c_str());
    if (q > 0) {
      const auto limit = static_cast<std::size_t>((q + period - 1) / period);
      n = std::min(n, std::max<std::size_t>(1, limit));
    }
  }
  return n;
}

namespace {

std::string signal_text(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return std::to_string(sig) + (abbrev ? std::string(" (SIG") + abbrev + ")" : std::string());
}

std::string died_message(const std::string& pool, int pid, exit_status s) {
  std::string m = "pool \"" + pool + "\": worker " + std::to_string(pid) + " died ";
  if (s.is_signaled()) {
    m += "from signal " + signal_text(s.signal());
    if (s.signal() == SIGKILL)
      m += "; killed from outside, or by the kernel's OOM killer (see dmesg)";
  } else {
    m += "with exit code " + std::to_string(s.code());
  }
  return m + " while running the task";
}

}  // namespace

worker_died::worker_died(std::string pool, int pid, exit_status status)
    : boost::system::system_error(make_error_code(errc::worker_died)),
      message_(died_message(pool, pid, status)),
      pid_(pid),
      status_(status) {}

namespace detail {

std::string task_frame_start(std::uint64_t invoker, std::string_view function_name,
                             std::uint8_t mode) {
  std::string f;
  f.reserve(64);
  f.append(task_header, '\0');
  f.append(reinterpret_cast<const char*>(&invoker), 8);
  if (!invoker) {
    const auto n = static_cast<std::uint16_t>(function_name.size());
    f.append(reinterpret_cast<const char*>(&n), 2);
    f.append(function_name);
  }
  f.push_back(static_cast<char>(mode));
  return f;
}

void finish_task_frame(std::string& frame) {
  if (frame.size() - 8 > 0xffffffffu)
    throw boost::system::system_error(make_error_code(errc::message_too_large),
                                      "process_pool: a task of " + std::to_string(frame.size()) +
                                          " bytes exceeds the 4 GiB - 1 message limit");
  const auto size = static_cast<std::uint32_t>(frame.size() - 8);
  std::memcpy(frame.data(), &size, 4);
  std::memcpy(frame.data() + 4, &task_tag, 4);
}

struct event_thread {
  asio::io_context ctx{1};
  asio::executor_work_guard<asio::io_context::executor_type> guard{ctx.get_executor()};
  std::thread thread{[this] { ctx.run(); }};
  ~event_thread() {
    guard.reset();
    if (thread.get_id() == std::this_thread::get_id())
      thread.detach();  // destroyed from one of its own handlers: it ends when run() does
    else
      thread.join();
  }
};

namespace {

error_code errno_code(int e) { return {e, boost::system::system_category()}; }

// The pool side of every worker socket in this process, of every pool: a forked worker closes
// them all but its own, or a worker of one pool would keep another's sockets open and its
// workers would never see end-of-stream.
std::mutex registry_mutex;
std::vector<int> registry;

void register_fd(int fd) {
  std::lock_guard lock(registry_mutex);
  registry.push_back(fd);
}
void unregister_fd(int fd) {
  std::lock_guard lock(registry_mutex);
  registry.erase(std::remove(registry.begin(), registry.end(), fd), registry.end());
}

struct worker {
  worker(const executor_type& ex, std::size_t slot) : slot(slot), sd(ex), timer(ex) {}
  std::size_t slot;
  int pid = -1;
  child proc;
  asio::posix::stream_descriptor sd;
  asio::steady_timer timer;
  worker_progress* progress = nullptr;
  std::string in;
  std::size_t in_pos = 0;
  std::string out;
  std::deque<pool_task> held;  // sent, not resolved, in the order sent
  std::uint64_t sent = 0;
  std::uint64_t timed_seq = 0;      // the task the timer watches
  std::uint64_t timed_out_seq = 0;  // the task whose timeout killed this worker
  std::uint64_t retired_after = 0;  // a retiring worker ran tasks up to this one
  bool ready = false;
  bool reading = false;
  bool writing = false;
  bool retiring = false;    // takes no more tasks
  bool closed = false;      // its socket's write side was shut
  bool exited = false;      // finalized: its tasks settled, its slot free
  bool exit_known = false;  // reaped
  bool eof = false;         // its socket reached end-of-stream
  exit_status status{};
  bool init_failed = false;
  std::exception_ptr init_error;
};

}  // namespace

class pool_core : public std::enable_shared_from_this<pool_core> {
 public:
  pool_core(executor_type ex, pool_options o) : ex_(std::move(ex)), opts_(std::move(o)) {
    if (opts_.workers == 0) opts_.workers = available_cpus();
    if (opts_.method == start_method::spawn && opts_.initializer &&
        opts_.initializer.spawn_request().empty())
      throw std::invalid_argument("coproc::process_pool \"" + opts_.name +
                                  "\": the initializer cannot run with the spawn start method: " +
                                  opts_.initializer.why_not_spawnable());
    cfg_.name = opts_.name;
    cfg_.max_tasks = opts_.max_tasks_per_child.value_or(0);
    cfg_.max_memory = opts_.max_worker_memory.value_or(0);
    cfg_.max_age_ns =
        opts_.max_worker_age
            ? std::chrono::duration_cast<std::chrono::nanoseconds>(*opts_.max_worker_age).count()
            : 0;
    cfg_.flush_each = opts_.task_timeout.has_value();
    cfg_.max_message = opts_.max_message_size;
    if (opts_.method == start_method::spawn && opts_.initializer)
      cfg_.initializer = opts_.initializer.spawn_request();
  }

  ~pool_core() {
    // Only when the event loop went away with work open: nothing may stay unresolved.
    auto fail = [](pool_task& t) {
      t.state->set_exception(std::make_exception_ptr(boost::system::system_error(
          make_error_code(errc::shut_down), "process_pool destroyed with the task unfinished")));
    };
    for (auto& t : queue_) fail(t);
    for (auto& w : workers_)
      if (w) {
        for (auto& t : w->held) fail(t);
        if (w->progress) ::munmap(w->progress, sizeof(worker_progress));
        close_socket(*w);
      }
  }

  void start() {
    std::lock_guard lock(m_);
    workers_.resize(opts_.workers);
    for (std::size_t i = 0; i < opts_.workers; ++i) start_worker(i);
  }

  const executor_type& executor() const { return ex_; }
  const pool_options& options() const { return opts_; }

  void submit(pool_task t) {
    if (t.frame.size() - 8 > opts_.max_message_size)
      throw boost::system::system_error(
          make_error_code(errc::message_too_large),
          "process_pool \"" + opts_.name + "\": a task of " + std::to_string(t.frame.size() - 8) +
              " bytes exceeds max_message_size " + std::to_string(opts_.max_message_size));
    std::lock_guard lock(m_);
    check_open_locked("submit");
    if (broken_) {
      ++stats_.submitted;
      ++stats_.failed;
      t.state->set_exception(broken_error_);
      return;
    }
    ++stats_.submitted;
    queue_.push_back(std::move(t));
    // While results are being delivered, the submissions their handlers make wait for the
    // pump that follows the delivery: one write per worker for all of them.
    if (delivering_) return;
    // An idle worker takes the task at once, from this thread (one write, no hop through the
    // event loop); otherwise one posted pump batches this submission with those that follow.
    if (!pump_scheduled_ && queue_.size() == 1 && idle_worker())
      pump();
    else
      schedule_pump();
  }

  void check_open(const char* what) const {
    std::lock_guard lock(m_);
    check_open_locked(what);
  }

  void check_open_locked(const char* what) const {
    if (closed_)
      throw std::logic_error("coproc::process_pool \"" + opts_.name + "\": " + what +
                             " after shutdown");
  }

  void shutdown(bool wait, bool cancel_futures) {
    {
      std::lock_guard lock(m_);
      close_locked(cancel_futures);
    }
    if (!wait || on_loop()) return;
    std::unique_lock lock(m_);
    finished_cv_.wait(lock, [&] { return finished_; });
  }

  void async_shutdown(bool cancel_futures, asio::any_completion_handler<void()> h) {
    std::lock_guard lock(m_);
    close_locked(cancel_futures);
    if (finished_)
      asio::post(ex_, [h = std::move(h)]() mutable { std::move(h)(); });
    else
      shutdown_waiters_.push_back(std::move(h));
  }

  void signal_workers(int sig) {
    std::lock_guard lock(m_);
    terminating_ = true;
    close_locked(true);
    for (auto& w : workers_)
      if (w && !w->exit_known && w->pid > 0) ::kill(w->pid, sig);
  }

  pool_stats stats() const {
    std::lock_guard lock(m_);
    pool_stats s = stats_;
    s.queued = queue_.size();
    s.running = 0;
    s.workers = 0;
    for (auto& w : workers_)
      if (w && !w->exit_known) {
        s.running += w->held.size();
        ++s.workers;
      }
    return s;
  }

  std::vector<int> pids() const {
    std::lock_guard lock(m_);
    std::vector<int> v;
    for (auto& w : workers_)
      if (w && !w->exit_known) v.push_back(w->pid);
    return v;
  }

 private:
  bool on_loop() const {
    if (const auto* io = ex_.target<asio::io_context::executor_type>())
      return io->running_in_this_thread();
    return false;
  }

  // --- workers ---------------------------------------------------------------------------

  void start_worker(std::size_t slot) {
    auto w = std::make_shared<worker>(ex_, slot);
    workers_[slot] = w;
    try {
      if (opts_.method == start_method::fork)
        fork_worker(*w);
      else
        spawn_worker(*w);
    } catch (...) {
      workers_[slot] = nullptr;
      if (w->progress) ::munmap(w->progress, sizeof(worker_progress));
      throw;
    }
    w->in.resize(1 << 16);
    write(w);
    auto self = shared_from_this();
    w->proc.async_wait(
        [self, w](error_code ec, exit_status status) { self->on_exit(w, ec, status); });
    read(w);
  }

  worker_progress* map_progress(int fd) {
    void* p = ::mmap(nullptr, sizeof(worker_progress), PROT_READ | PROT_WRITE,
                     fd >= 0 ? MAP_SHARED : MAP_SHARED | MAP_ANONYMOUS, fd, 0);
    if (p == MAP_FAILED)
      throw spawn_error(errno_code(errno), opts_.name,
                        "process_pool \"" + opts_.name + "\": mmap: " + std::strerror(errno));
    auto* wp = static_cast<worker_progress*>(p);
    wp->started = wp->finished = 0;
    return wp;
  }

  void fork_worker(worker& w) {
    w.progress = map_progress(-1);
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
      throw spawn_error(errno_code(errno), opts_.name,
                        std::string("process_pool: socketpair: ") + std::strerror(errno));
    const std::string name = opts_.name + "-" + std::to_string(w.slot + 1);
    std::vector<int> others;
    {
      std::lock_guard lock(registry_mutex);
      others = registry;
    }
    const pid_t parent = ::getpid();
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
      const int e = errno;
      ::close(sv[0]);
      ::close(sv[1]);
      throw spawn_error(errno_code(e), name,
                        "process_pool: cannot fork worker \"" + name + "\": " + std::strerror(e));
    }
    if (pid == 0) {
      ::close(sv[0]);
      for (int fd : others) ::close(fd);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
      if (::getppid() != parent) ::_exit(1);
      worker_config cfg = cfg_;
      cfg.name = name;
      run_pool_worker(sv[1], w.progress, cfg, opts_.initializer.run());
    }
    ::close(sv[1]);
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pidfd < 0) {
      const int e = errno;
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      ::close(sv[0]);
      throw spawn_error(errno_code(e), name, std::string("pidfd_open: ") + std::strerror(e));
    }
    w.pid = pid;
    w.proc = adopt_process(ex_, pid, pidfd, name);
    adopt_socket(w, sv[0]);
  }

  void spawn_worker(worker& w) {
    const std::string name = opts_.name + "-" + std::to_string(w.slot + 1);
    const int memfd = static_cast<int>(::syscall(SYS_memfd_create, "coproc-worker", MFD_CLOEXEC));
    if (memfd < 0)
      throw spawn_error(errno_code(errno), name,
                        std::string("process_pool: memfd_create: ") + std::strerror(errno));
    unique_fd page_fd(memfd);
    if (::ftruncate(memfd, sizeof(worker_progress)) < 0)
      throw spawn_error(errno_code(errno), name,
                        std::string("process_pool: ftruncate: ") + std::strerror(errno));
    w.progress = map_progress(memfd);
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
      throw spawn_error(errno_code(errno), name,
                        std::string("process_pool: socketpair: ") + std::strerror(errno));
    unique_fd parent_end(sv[0]), child_end(sv[1]);
    command cmd{"/proc/self/exe"};
    cmd.env("COPROC_WORKER_FD", "3")
        .pass_fd(3, child_end.get())
        .pass_fd(4, memfd)
        .die_with_parent();
    w.proc = spawn(ex_, cmd);
    w.pid = w.proc.pid();
    child_end.reset();
    worker_config cfg = cfg_;
    cfg.name = name;
    std::string frame(8, '\0');
    encode_to(frame, cfg);
    const auto size = static_cast<std::uint32_t>(frame.size() - 8);
    std::memcpy(frame.data(), &size, 4);
    std::memcpy(frame.data() + 4, &pool_config_tag, 4);
    adopt_socket(w, parent_end.release());
    w.out = std::move(frame);
  }

  void adopt_socket(worker& w, int fd) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    w.sd.assign(fd);
    register_fd(fd);
  }

  static void close_socket(worker& w) {
    if (!w.sd.is_open()) return;
    unregister_fd(w.sd.native_handle());
    error_code ignored;
    w.sd.close(ignored);
  }

  // --- dispatch --------------------------------------------------------------------------

  void schedule_pump() {
    if (pump_scheduled_) return;
    pump_scheduled_ = true;
    asio::post(ex_, [self = shared_from_this()] {
      std::lock_guard lock(self->m_);
      self->pump_scheduled_ = false;
      self->pump();
    });
  }

  std::size_t depth() const {
    if (opts_.prefetch) return 1 + *opts_.prefetch;
    if (ema_ns_ <= 0) return 2;
    if (ema_ns_ < 5'000) return 64;
    if (ema_ns_ < 50'000) return 8;
    return 2;
  }

  bool idle_worker() const {
    for (auto& w : workers_)
      if (w && w->held.empty() && accepts(*w)) return true;
    return false;
  }

  bool accepts(const worker& w) const {
    return !w.exit_known && !w.retiring && !w.closed && !w.init_failed &&
           (!cfg_.max_tasks || w.sent < cfg_.max_tasks);
  }

  // Hands queued tasks to workers, least loaded first, then writes each worker's batch.
  void pump() {
    if (queue_.empty() || broken_) return;
    const std::size_t limit = depth();
    auto& ws = pump_open_;  // members, to reuse their storage
    auto& touched = pump_touched_;
    ws.clear();
    touched.clear();
    for (auto& w : workers_)
      if (w && accepts(*w) && w->held.size() < limit) ws.push_back(w.get());
    while (!queue_.empty() && !ws.empty()) {
      auto it = std::min_element(ws.begin(), ws.end(), [](worker* a, worker* b) {
        return a->held.size() < b->held.size();
      });
      worker& w = **it;
      pool_task t = std::move(queue_.front());
      queue_.pop_front();
      if (!t.state->set_running()) {
        ++stats_.cancelled;
        continue;
      }
      t.seq = next_seq_++;
      std::memcpy(t.frame.data() + 8, &t.seq, 8);
      w.out.append(t.frame);
      if (w.held.empty()) arm_timer(w, t.seq);
      w.held.push_back(std::move(t));
      ++w.sent;
      if (std::find(touched.begin(), touched.end(), &w) == touched.end()) touched.push_back(&w);
      if (w.held.size() >= limit || !accepts(w)) ws.erase(it);
    }
    for (worker* w : touched) write(find(w));  // write() does not pump: no reentry
  }

  std::shared_ptr<worker> find(worker* p) {
    for (auto& w : workers_)
      if (w.get() == p) return w;
    return nullptr;
  }

  void write(const std::shared_ptr<worker>& w) {
    if (!w || w->writing || w->exited) return;
    while (!w->out.empty()) {
      const ssize_t n =
          ::send(w->sd.native_handle(), w->out.data(), w->out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        w->out.erase(0, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        w->writing = true;
        w->sd.async_wait(asio::posix::stream_descriptor::wait_write,
                         [self = shared_from_this(), w](error_code ec) {
                           std::lock_guard lock(self->m_);
                           w->writing = false;
                           if (!ec) self->write(w);
                         });
        return;
      }
      w->out.clear();  // the worker is gone: its exit is handled by on_exit
      return;
    }
    if (w->closed && !w->exited) ::shutdown(w->sd.native_handle(), SHUT_WR);
  }

  // --- results ---------------------------------------------------------------------------

  // One read at a time per worker. async_read_some, not async_wait: Asio tries a read op at
  // once and queues it without touching epoll, where a wait op costs an epoll_ctl every time.
  // The futures a read resolves complete after the pool's lock is released, in a
  // completion_batch: handlers on this thread's event loop run at once, and the tasks they
  // submit go out in one pump after them.
  void read(const std::shared_ptr<worker>& w) {
    if (w->reading || w->eof || !w->sd.is_open()) return;
    if (w->in.size() - w->in_pos < 4096) {
      // Room for the next read: the buffer grows to hold a frame larger than it.
      std::size_t need = 1 << 16;
      if (w->in_pos >= 8) {
        std::uint32_t size;
        std::memcpy(&size, w->in.data(), 4);
        need = std::max<std::size_t>(need, size + 8 + 4096);
      }
      if (w->in.size() < need) w->in.resize(need);
    }
    w->reading = true;
    w->sd.async_read_some(asio::buffer(w->in.data() + w->in_pos, w->in.size() - w->in_pos),
                          [self = shared_from_this(), w](error_code ec, std::size_t n) {
                            completion_batch batch;
                            {
                              std::lock_guard lock(self->m_);
                              w->reading = false;
                              if (n > 0) {
                                w->in_pos += n;
                                self->handle_frames(*w);
                              }
                              if (ec == asio::error::operation_aborted) return;
                              if (ec) {
                                // End of stream (or an error): every byte the worker sent has
                                // been handled.
                                w->eof = true;
                                if (w->exit_known) self->finalize(w);
                              } else {
                                self->read(w);
                              }
                              ++self->delivering_;
                            }
                            self->deliver(batch);
                          });
  }

  // Completes the futures a read resolved, then sends what their handlers submitted.
  void deliver(completion_batch& batch) {
    struct end_delivery {
      pool_core* core;
      ~end_delivery() {
        std::lock_guard lock(core->m_);
        if (--core->delivering_ == 0) core->pump();
        core->maybe_close_workers();
      }
    } end{this};
    batch.flush();
  }

  void handle_frames(worker& w) {
    std::size_t pos = 0;
    bool head_changed = false;
    while (w.in_pos - pos >= 8) {
      std::uint32_t size, tag;
      std::memcpy(&size, w.in.data() + pos, 4);
      std::memcpy(&tag, w.in.data() + pos + 4, 4);
      if (w.in_pos - pos < 8 + std::size_t{size}) break;
      const std::string_view body(w.in.data() + pos + 8, size);
      pos += 8 + size;
      if (tag == ready_tag) {
        w.ready = true;
      } else if (tag == init_failed_tag) {
        w.init_failed = true;
        try {
          w.init_error = decode_exception(decode<std::string>(body));
        } catch (...) {
          w.init_error = std::current_exception();
        }
      } else if (tag == retire_tag) {
        std::uint64_t last = 0;
        if (body.size() >= 8) std::memcpy(&last, body.data(), 8);
        w.retiring = true;
        w.retired_after = last;
      } else if (body.size() >= 16) {
        std::uint64_t seq, ns;
        std::memcpy(&seq, body.data(), 8);
        std::memcpy(&ns, body.data() + 8, 8);
        if (w.held.empty() || w.held.front().seq != seq) continue;  // not ours: ignore
        pool_task t = std::move(w.held.front());
        w.held.pop_front();
        head_changed = true;
        t.resolve(*t.state, tag, body.substr(16));
        ++(tag == exception_tag ? stats_.failed : stats_.done);
        const double x = static_cast<double>(ns);
        ema_ns_ = ema_ns_ <= 0 ? x : 0.9 * ema_ns_ + 0.1 * x;
      }
    }
    if (pos) {
      std::memmove(w.in.data(), w.in.data() + pos, w.in_pos - pos);
      w.in_pos -= pos;
    }
    if (head_changed && !w.held.empty()) arm_timer(w, w.held.front().seq);
  }

  // --- timeouts --------------------------------------------------------------------------

  void arm_timer(worker& w, std::uint64_t seq) {
    if (!opts_.task_timeout) return;
    w.timed_seq = seq;
    w.timer.expires_after(*opts_.task_timeout);
    auto ws = find(&w);
    w.timer.async_wait([self = shared_from_this(), ws, seq](error_code ec) {
      if (ec) return;
      std::lock_guard lock(self->m_);
      self->on_timer(*ws, seq);
    });
  }

  void on_timer(worker& w, std::uint64_t seq) {
    if (w.exit_known || w.timed_seq != seq || w.held.empty()) return;
    const std::uint64_t started = __atomic_load_n(&w.progress->started, __ATOMIC_ACQUIRE);
    const std::uint64_t finished = __atomic_load_n(&w.progress->finished, __ATOMIC_ACQUIRE);
    if (started == seq && finished < seq) {
      w.timed_out_seq = seq;
      w.retiring = true;
      ::kill(w.pid, SIGKILL);
      return;
    }
    if (started < seq)  // not started yet (its worker still initialising): wait a full timeout
      arm_timer(w, seq);
    else if (finished < started)  // the watched task is done, its result on its way
      arm_timer(w, started);
  }

  // --- worker exit -----------------------------------------------------------------------

  // The worker was reaped. Its results may still be in the socket: the worker is finalized
  // once the read side has seen end-of-stream (shutting down our read side guarantees it
  // comes, even if a process the task forked still holds the worker's end).
  void on_exit(const std::shared_ptr<worker>& w, error_code ec, exit_status status) {
    std::lock_guard lock(m_);
    if (w->exit_known) return;
    w->exit_known = true;
    w->status = ec ? exit_status{} : status;
    w->timer.cancel();
    if (w->sd.is_open()) ::shutdown(w->sd.native_handle(), SHUT_RD);
    if (w->eof || !w->sd.is_open()) {
      finalize(w);
    } else {
      read(w);  // in case no read is pending (one always is, but be sure)
    }
  }

  // Settles the tasks a dead worker held and starts its replacement.
  void finalize(const std::shared_ptr<worker>& w) {
    if (w->exited) return;
    w->exited = true;
    close_socket(*w);
    const std::uint64_t started = __atomic_load_n(&w->progress->started, __ATOMIC_ACQUIRE);
    const std::uint64_t finished = __atomic_load_n(&w->progress->finished, __ATOMIC_ACQUIRE);
    const exit_status status = w->status;

    // An initializer that threw, or one that ended its worker.
    if (w->init_failed || (opts_.initializer && !w->ready && !w->retiring && !terminating_ &&
                           !closed_with_no_work())) {
      if (!broken_) {
        std::string why;
        if (w->init_error) {
          try {
            std::rethrow_exception(w->init_error);
          } catch (const std::exception& e) {
            why = e.what();
          } catch (...) {
            why = "a non-standard exception";
          }
        } else {
          why = "its worker ended with " + status.to_string() + " before it finished";
        }
        break_pool("process_pool \"" + opts_.name + "\": the worker initializer failed: " + why);
      }
    }

    std::deque<pool_task> requeue;
    for (auto& t : w->held) {
      if (broken_) {
        fail(t, broken_error_);
      } else if (t.seq == w->timed_out_seq) {
        fail(t, std::make_exception_ptr(boost::system::system_error(
                    make_error_code(errc::timed_out),
                    "process_pool \"" + opts_.name + "\": the task ran past its timeout of " +
                        std::to_string(opts_.task_timeout->count()) + " ms; worker " +
                        std::to_string(w->pid) + " was killed")));
      } else if (t.seq == started && finished < started) {
        // The task it was running when it died.
        if (t.retries_left > 0 && !terminating_) {
          --t.retries_left;
          requeue.push_back(std::move(t));
        } else {
          fail(t, std::make_exception_ptr(worker_died(opts_.name, w->pid, status)));
        }
      } else if (terminating_) {
        fail(t, std::make_exception_ptr(boost::system::system_error(
                    make_error_code(errc::shut_down),
                    "process_pool \"" + opts_.name + "\": workers terminated")));
      } else {
        // Not started, or finished with its result lost: it runs again elsewhere.
        requeue.push_back(std::move(t));
      }
    }
    w->held.clear();
    for (auto it = requeue.rbegin(); it != requeue.rend(); ++it) queue_.push_front(std::move(*it));

    ::munmap(w->progress, sizeof(worker_progress));
    w->progress = nullptr;
    const std::size_t slot = w->slot;
    workers_[slot] = nullptr;
    if (!closed_ || !queue_.empty()) {
      if (!broken_) {
        ++stats_.worker_restarts;
        try {
          start_worker(slot);
        } catch (const std::exception& e) {
          break_pool(std::string("process_pool \"") + opts_.name +
                     "\": cannot start a replacement worker: " + e.what());
        }
      }
    }
    if (broken_) fail_queue();
    pump();
    maybe_close_workers();
  }

  bool closed_with_no_work() const { return closed_ && queue_.empty(); }

  void fail(pool_task& t, std::exception_ptr e) {
    t.state->set_exception(std::move(e));
    ++stats_.failed;
  }

  void break_pool(const std::string& why) {
    broken_ = true;
    broken_error_ = std::make_exception_ptr(
        boost::system::system_error(make_error_code(errc::pool_broken), why));
    fail_queue();
    for (auto& w : workers_)
      if (w && !w->exited) {
        for (auto& t : w->held) fail(t, broken_error_);
        w->held.clear();
        if (w->pid > 0 && !w->exit_known) ::kill(w->pid, SIGKILL);
      }
  }

  void fail_queue() {
    for (auto& t : queue_) fail(t, broken_error_);
    queue_.clear();
  }

  // --- shutdown --------------------------------------------------------------------------

  void close_locked(bool cancel_futures) {
    if (cancel_futures) {
      // A task requeued after its worker died or retired was sent before: its future is
      // running and cannot be cancelled. It still runs, or fails when the workers are being
      // terminated; dropping it would leave its future unresolved.
      std::deque<pool_task> keep;
      for (auto& t : queue_) {
        if (t.state->cancel())
          ++stats_.cancelled;
        else if (terminating_)
          fail(t, std::make_exception_ptr(boost::system::system_error(
                      make_error_code(errc::shut_down),
                      "process_pool \"" + opts_.name + "\": workers terminated")));
        else
          keep.push_back(std::move(t));
      }
      queue_.swap(keep);
      if (!queue_.empty()) schedule_pump();
    }
    closed_ = true;
    maybe_close_workers();
  }

  // Once closed and out of work, each idle worker gets end-of-stream and exits; when the last
  // one is reaped, the pool is finished.
  void maybe_close_workers() {
    if (!closed_) return;
    bool all_exited = true;
    for (auto& w : workers_) {
      if (!w) continue;
      if (!w->exited) all_exited = false;
      if (!w->exited && !w->closed && w->held.empty() && queue_.empty()) {
        w->closed = true;
        if (!w->writing) ::shutdown(w->sd.native_handle(), SHUT_WR);
      }
    }
    if (all_exited && queue_.empty() && !finished_) {
      finished_ = true;
      finished_cv_.notify_all();
      for (auto& h : shutdown_waiters_)
        asio::post(ex_, [h = std::move(h)]() mutable { std::move(h)(); });
      shutdown_waiters_.clear();
    }
  }

  executor_type ex_;
  pool_options opts_;
  worker_config cfg_;
  mutable std::mutex m_;
  std::condition_variable finished_cv_;
  std::deque<pool_task> queue_;
  std::vector<std::shared_ptr<worker>> workers_;
  std::uint64_t next_seq_ = 1;
  double ema_ns_ = 0;
  bool pump_scheduled_ = false;
  std::vector<worker*> pump_open_, pump_touched_;
  int delivering_ = 0;  // read handlers completing futures outside the lock
  bool closed_ = false;
  bool terminating_ = false;
  bool finished_ = false;
  bool broken_ = false;
  std::exception_ptr broken_error_;
  pool_stats stats_;
  std::vector<asio::any_completion_handler<void()>> shutdown_waiters_;
};

std::shared_ptr<pool_core> make_pool_core(executor_type ex, pool_options opts) {
  auto core = std::make_shared<pool_core>(std::move(ex), std::move(opts));
  core->start();
  return core;
}
void pool_submit(pool_core& core, pool_task task) { core.submit(std::move(task)); }
void pool_check_open(const pool_core& core, const char* what) { core.check_open(what); }
start_method pool_method(const pool_core& core) { return core.options().method; }
executor_type pool_executor(const pool_core& core) { return core.executor(); }
std::size_t pool_workers(const pool_core& core) { return core.options().workers; }
unsigned pool_retries(const pool_core& core) { return core.options().max_retries; }
void pool_shutdown(const std::shared_ptr<pool_core>& core, bool wait, bool cancel_futures) {
  core->shutdown(wait, cancel_futures);
}
void pool_async_shutdown(const std::shared_ptr<pool_core>& core, bool cancel_futures,
                         asio::any_completion_handler<void()> h) {
  core->async_shutdown(cancel_futures, std::move(h));
}
void pool_signal_workers(const std::shared_ptr<pool_core>& core, int sig) {
  core->signal_workers(sig);
}
pool_stats pool_get_stats(const pool_core& core) { return core.stats(); }
std::vector<int> pool_worker_pids(const pool_core& core) { return core.pids(); }

}  // namespace detail

process_pool::process_pool(const executor_type& ex, pool_options options)
    : core_(detail::make_pool_core(ex, std::move(options))) {}

process_pool::process_pool(pool_options options)
    : thread_(std::make_unique<detail::event_thread>()) {
  // Workers are forked on the pool's own thread: PR_SET_PDEATHSIG ties a child to the thread
  // that forked it, and the constructing thread may end before the pool does.
  std::promise<std::shared_ptr<detail::pool_core>> made;
  asio::post(thread_->ctx, [&] {
    try {
      made.set_value(detail::make_pool_core(thread_->ctx.get_executor(), std::move(options)));
    } catch (...) {
      made.set_exception(std::current_exception());
    }
  });
  core_ = made.get_future().get();
}

process_pool& process_pool::operator=(process_pool&& o) noexcept {
  if (this != &o) {
    this->~process_pool();
    new (this) process_pool(std::move(o));
  }
  return *this;
}

process_pool::~process_pool() {
  if (!core_) return;
  core_->shutdown(thread_ != nullptr, false);
  core_.reset();
  thread_.reset();
}

void process_pool::terminate_workers() { detail::pool_signal_workers(core_, SIGTERM); }
void process_pool::kill_workers() { detail::pool_signal_workers(core_, SIGKILL); }

}  // namespace coproc
