// C++ callables in child processes: `process` (Python's multiprocessing.Process) and
// `async_call` (run one function in a fresh child, get its result or its exception).
//
// Start methods:
// - `start_method::fork` (default): the child is a copy of the parent made by fork(2), so any
//   callable with any arguments runs; nothing is encoded but the result. In the child only
//   the calling thread exists: a callable must not use the parent's io_context, and in a
//   multi-threaded parent it must not take locks other threads may have held at the fork
//   (malloc and stdio are safe with glibc; your own mutexes and most libraries' are not).
// - `start_method::spawn`: the program re-executes itself (/proc/self/exe) and runs a function
//   registered with `COPROC_REGISTER(fn)`; arguments and results are encoded. `main` must call
//   `coproc::worker_hook(argc, argv)` first. Safe in multi-threaded parents.
#pragma once

#include <coproc/child.hpp>
#include <coproc/codec.hpp>
#include <coproc/config.hpp>
#include <coproc/exit_status.hpp>
#include <coproc/pipe.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <concepts>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc {

/// How a child running a C++ callable is made (see the top of this header).
enum class start_method { fork, spawn };

/// Settings of a `process`.
struct process_options {
  /// Shown in errors and set as the child's process name (first 15 bytes, `ps -o comm`).
  /// Empty: "process-N" with N counting the processes made by this program.
  std::string name{};
  /// A daemon child is killed (SIGKILL) when the parent exits or dies, by any means.
  /// Caveat of Linux' PR_SET_PDEATHSIG: "the parent" is the thread that called `start`.
  bool daemon = false;
  start_method method = start_method::fork;
};

/// Settings of `async_call`.
struct call_options {
  start_method method = start_method::fork;
  /// Shown in errors and set as the child's process name. Empty: "call".
  std::string name{};
  /// The largest result accepted (bytes of its encoding).
  std::size_t max_result_size = 0xffffffffu;
};

namespace detail {

// A function registered for the spawn start method: decodes its arguments from `args`,
// calls, and appends its encoded result to `result` (a frame buffer).
using invoker = void (*)(std::string_view args, std::string& result);
using any_function = void (*)();
// A pool task's worker-side entry: `in` is [mode][callable state][arguments]; appends the
// encoded result (or exception) to `out` and returns its frame tag.
using task_invoker = std::uint32_t (*)(std::string_view in, std::string& out);

struct registered_function {
  std::string name{};
  any_function address;
  invoker invoke;
  task_invoker invoke_task;
};

void register_function(const char* name, any_function address, invoker invoke,
                       task_invoker invoke_task);
const registered_function* find_function(any_function address);
const registered_function* find_function(std::string_view name);

// Frame tag of a call request and of a void result.
inline constexpr std::uint32_t request_tag = 4;
inline constexpr std::uint32_t void_tag = 5;

struct call_request {
  std::string function;  // registered name
  std::string name;      // process name
  std::string args;      // encoded tuple
  bool want_result = true;
};

template <typename R>
std::uint32_t result_tag() {
  if constexpr (std::is_void_v<R>)
    return void_tag;
  else
    return type_tag<R>();
}

// Runs `fn` and writes its result (or its exception) as a frame.
template <typename Fn>
std::string run_to_frame(Fn&& fn) {
  using R = std::invoke_result_t<Fn&>;
  std::string frame;
  try {
    if constexpr (std::is_void_v<R>) {
      fn();
      frame = connection::make_frame_buffer(void_tag);
    } else {
      R r = fn();
      frame = connection::make_frame_buffer(type_tag<std::decay_t<R>>());
      encode_to(frame, r);
    }
  } catch (...) {
    frame = connection::make_frame_buffer(exception_tag);
    encode_to(frame, encode_exception(std::current_exception()));
  }
  return frame;
}

inline constexpr std::uint8_t single_mode = 0;
inline constexpr std::uint8_t chunk_mode = 1;

template <typename Call, typename ArgsTuple>
using apply_result_t =
    std::decay_t<decltype(std::apply(std::declval<Call&>(), std::declval<ArgsTuple&&>()))>;

// Runs the call (once, or for each tuple of a chunk) and appends the encoded result, or the
// encoded exception, to `out`. Returns the frame tag.
template <typename Call, typename ArgsTuple>
std::uint32_t run_task(Call& call, std::uint8_t mode, std::string_view in, std::string& out) {
  using R = apply_result_t<Call, ArgsTuple>;
  const std::size_t mark = out.size();
  try {
    if (mode == single_mode) {
      auto args = decode<ArgsTuple>(in);
      if constexpr (std::is_void_v<R>) {
        std::apply(call, std::move(args));
        return void_tag;
      } else {
        const R r = std::apply(call, std::move(args));
        encode_to(out, r);
        return type_tag<R>();
      }
    } else {
      if constexpr (std::is_void_v<R>) {
        throw std::logic_error("coproc: map needs a function that returns a value");
      } else {
        auto args = decode<std::vector<ArgsTuple>>(in);
        std::vector<R> rs;
        rs.reserve(args.size());
        for (auto& a : args) rs.push_back(std::apply(call, std::move(a)));
        encode_to(out, rs);
        return type_tag<std::vector<R>>();
      }
    }
  } catch (...) {
    out.resize(mark);
    encode_to(out, encode_exception(std::current_exception()));
    return exception_tag;
  }
}

template <typename F>
struct function_traits;
template <typename R, typename... A>
struct function_traits<R (*)(A...)> {
  using result = R;
  using args = std::tuple<std::decay_t<A>...>;
};
template <typename R, typename... A>
struct function_traits<R (*)(A...) noexcept> : function_traits<R (*)(A...)> {};

template <auto Fn>
void invoke_registered(std::string_view args, std::string& result) {
  using traits = function_traits<decltype(Fn)>;
  auto decoded = decode<typename traits::args>(args);
  result = run_to_frame([&]() -> decltype(auto) { return std::apply(Fn, std::move(decoded)); });
}

template <auto Fn>
std::uint32_t invoke_registered_task(std::string_view in, std::string& out) {
  const auto mode = static_cast<std::uint8_t>(in[0]);
  in.remove_prefix(1);
  auto f = Fn;
  return run_task<decltype(Fn), typename function_traits<decltype(Fn)>::args>(f, mode, in, out);
}

template <auto Fn>
bool register_function_v(const char* name) {
  using traits = function_traits<decltype(Fn)>;
  static_assert(encodable<typename traits::args>,
                "coproc: COPROC_REGISTER needs encodable parameter types");
  static_assert(
      std::is_void_v<typename traits::result> || encodable<std::decay_t<typename traits::result>>,
      "coproc: COPROC_REGISTER needs an encodable result type");
  register_function(name, reinterpret_cast<any_function>(Fn), &invoke_registered<Fn>,
                    &invoke_registered_task<Fn>);
  return true;
}

// What the non-template part needs to start a child for a callable.
struct launch_request {
  start_method method = start_method::fork;
  std::string name{};
  bool daemon = false;
  bool want_result = false;
  // fork: runs in the child and returns the result frame (empty: nothing to send).
  std::function<std::string()> run_in_child;
  // spawn: the encoded call_request (empty: the callable cannot be spawned; `why` says why).
  std::string request;
  std::string why_not_spawnable;
};

struct launched {
  child proc;
  connection channel;  // to the child; closed when no result is wanted
};

launched launch_callable(const executor_type& ex, launch_request& req);

// Completes with the result frame, or with an error naming how the child ended.
void start_call(const executor_type& ex, launch_request req, std::size_t max_result,
                asio::any_completion_handler<void(std::exception_ptr, frame)> handler);

template <typename F, typename... Args>
std::string spawn_request(F& f, std::tuple<Args...>& args, const std::string& name,
                          bool want_result, std::string& why) {
  if constexpr (std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>) {
    if constexpr ((encodable<Args> && ...)) {
      const registered_function* r = find_function(reinterpret_cast<any_function>(f));
      if (!r) {
        why = "the function is not registered (add COPROC_REGISTER(function) at namespace scope)";
        return {};
      }
      using params = typename function_traits<F>::args;
      if constexpr (std::is_constructible_v<params, std::tuple<Args...>&>) {
        call_request req{r->name, name, encode(params(args)), want_result};
        return encode(req);
      } else {
        why = "the arguments do not convert to the function's parameters";
        return {};
      }
    } else {
      why = "an argument type is not encodable";
      return {};
    }
  } else {
    why = "only registered functions (not lambdas or objects) run with the spawn start method";
    return {};
  }
}

template <typename T>
concept has_run_member = requires(T& t) {
  t.run();
};

std::string next_process_name();

}  // namespace detail

/// A C++ callable running in a child process.
///
/// Built from a callable and its arguments (copied into the object), or from an object with a
/// `run()` member (the subclass-of-Process style). Nothing runs until `start`. In the child, an
/// exception escaping the callable is printed to stderr ("process NAME: TYPE: what") and the
/// child exits with code 1; otherwise it exits with code 0 when the callable returns.
///
/// Destruction: a started process that was not joined or detached is killed (SIGKILL) and
/// reaped without blocking, as for `child`.
class process {
 public:
  using executor_type = coproc::executor_type;

  /// A process that runs `fn(args...)`, or `fn.run()` for an object with a `run` member.
  template <typename F, typename... Args>
  requires(std::invocable<std::decay_t<F>&, std::decay_t<Args>&...> ||
           (sizeof...(Args) == 0 && detail::has_run_member<std::decay_t<F>>))
      process(const executor_type& ex, process_options options, F&& fn, Args&&... args)
      : ex_(ex), options_(std::move(options)) {
    if (options_.name.empty()) options_.name = detail::next_process_name();
    using Fn = std::decay_t<F>;
    auto f = std::make_shared<Fn>(std::forward<F>(fn));
    if constexpr (std::invocable<Fn&, std::decay_t<Args>&...>) {
      auto a = std::make_shared<std::tuple<std::decay_t<Args>...>>(std::forward<Args>(args)...);
      run_ = [f, a] { std::apply(*f, *a); };
      spawnable_ = [f, a](const std::string& name, std::string& why) {
        return detail::spawn_request(*f, *a, name, false, why);
      };
    } else {
      run_ = [f] { f->run(); };
    }
  }
  template <typename F, typename... Args>
  requires(std::invocable<std::decay_t<F>&, std::decay_t<Args>&...> ||
           (sizeof...(Args) == 0 && detail::has_run_member<std::decay_t<F>>))
      process(const executor_type& ex, F&& fn, Args&&... args)
      : process(ex, process_options{}, std::forward<F>(fn), std::forward<Args>(args)...) {}

  process(process&&) noexcept;
  process& operator=(process&&) noexcept;
  ~process();

  executor_type get_executor() const noexcept { return ex_; }

  /// Starts the child. Throws `std::logic_error` when already started, `spawn_error` when
  /// fork/spawn fails, `std::invalid_argument` when the spawn method cannot run this callable
  /// (saying why: not registered, not encodable, not a function).
  void start();

  /// Waits for the child to exit. Completion: `void(error_code, exit_status)`; errors:
  /// `errc::not_running` when not started or detached. Cancellation: per-operation, all
  /// types; the child keeps running.
  template <typename Token = default_token>
  auto async_join(Token&& token = {}) {
    return asio::async_initiate<Token, void(error_code, exit_status)>(
        [this](auto handler) { start_join(std::move(handler)); }, token);
  }
  /// Blocks until the child exits.
  exit_status join();
  /// Blocks until the child exits or `timeout` passes; nullopt if it is still running.
  std::optional<exit_status> join(std::chrono::milliseconds timeout);

  /// True between `start` and the child's exit.
  bool is_alive();
  void terminate();  ///< SIGTERM (no-op once it exited)
  void kill();       ///< SIGKILL (no-op once it exited)
  /// Lets the child run on after this object is gone (it is reaped in the background).
  void detach();

  /// The child's pid; -1 before `start`.
  int pid() const noexcept { return child_.pid(); }
  const std::string& name() const noexcept { return options_.name; }
  bool daemon() const noexcept { return options_.daemon; }
  /// Sets the daemon flag; only before `start` (throws `std::logic_error` after).
  void set_daemon(bool on);
  /// As Python's: nullopt while running (or not started), the exit code, or -N when signal
  /// N ended it.
  std::optional<int> exitcode() const noexcept;
  /// How the child ended, once known.
  std::optional<exit_status> status() const noexcept { return child_.status(); }

 private:
  void start_join(asio::any_completion_handler<void(error_code, exit_status)> h);

  executor_type ex_;
  process_options options_;
  std::function<void()> run_;
  std::function<std::string(const std::string& name, std::string& why)> spawnable_;
  bool started_ = false;
  child child_;
};

/// Runs `fn(args...)` in a fresh child process and completes with its result.
/// Completion: `void(std::exception_ptr, R)` (`void(std::exception_ptr)` for void `fn`).
/// Errors: the exception `fn` threw, as its own type (see `encode_exception`);
/// `process_error` naming the exit code or signal when the child ended without a result
/// (segfault, abort, `_exit`); `spawn_error` when no child could be started;
/// `decode_error` for a result that did not decode.
/// Cancellation (all types): the child is killed and reaped, then the operation completes
/// with `system_error(operation_aborted)`.
/// The result type must be `encodable`; with the spawn method the arguments too, and `fn`
/// must be a function registered with `COPROC_REGISTER`.
template <typename Token, typename F, typename... Args>
requires(std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>) auto async_call(
    const executor_type& ex, call_options options, Token&& token, F&& fn, Args&&... args) {
  using Fn = std::decay_t<F>;
  using R = std::decay_t<std::invoke_result_t<Fn&, std::decay_t<Args>&...>>;
  static_assert(std::is_void_v<R> || encodable<R>,
                "coproc::async_call: the result type must be encodable (coproc::encodable)");
  using Sig =
      std::conditional_t<std::is_void_v<R>, void(std::exception_ptr),
                         void(std::exception_ptr, std::conditional_t<std::is_void_v<R>, int, R>)>;
  detail::launch_request req;
  req.method = options.method;
  req.name = options.name.empty() ? "call" : options.name;
  req.want_result = true;
  std::tuple<std::decay_t<Args>...> stored(std::forward<Args>(args)...);
  Fn f(std::forward<F>(fn));
  if (options.method == start_method::spawn) {
    req.request = detail::spawn_request(f, stored, req.name, true, req.why_not_spawnable);
  } else {
    // Shared, not captured by value: std::function needs a copyable target, and `fn` or an
    // argument may be move-only (as `process` allows).
    auto call = std::make_shared<std::pair<Fn, std::tuple<std::decay_t<Args>...>>>(
        std::move(f), std::move(stored));
    req.run_in_child = [call] {
      return detail::run_to_frame(
          [&]() -> decltype(auto) { return std::apply(call->first, call->second); });
    };
  }
  return asio::async_compose<Token, Sig>(
      [ex, req = std::move(req), max = options.max_result_size, started = false](
          auto& self, std::exception_ptr e = {}, detail::frame f = {}) mutable {
        if (!started) {
          started = true;
          // Out of the lambda before `self` (which holds the lambda) is moved.
          auto r = std::move(req);
          const auto e = ex;
          const auto m = max;
          return detail::start_call(e, std::move(r), m, std::move(self));
        }
        std::conditional_t<std::is_void_v<R>, int, R> value{};
        if (!e) {
          try {
            if (f.tag == detail::exception_tag)
              e = decode_exception(decode<std::string>(f.payload));
            else if (f.tag != detail::result_tag<R>())
              throw boost::system::system_error(make_error_code(errc::type_mismatch),
                                                "async_call: result");
            else if constexpr (!std::is_void_v<R>)
              decode_into(f.payload, value);
          } catch (...) {
            e = std::current_exception();
          }
        }
        if constexpr (std::is_void_v<R>)
          self.complete(e);
        else
          self.complete(e, std::move(value));
      },
      token, ex);
}

/// `co_await async_call(fn, args...)`: the coroutine form, on the coroutine's executor.
/// `fn` and the arguments are taken by value, as the token form copies them: the awaitable
/// starts only when awaited and may be stored until then (references to temporaries would
/// dangle by then).
template <typename F, typename... Args>
requires(std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>) auto async_call(F fn,
                                                                                   Args... args)
    -> asio::awaitable<std::invoke_result_t<std::decay_t<F>&, std::decay_t<Args>&...>> {
  // Named locals, not temporaries, in the co_await expression: g++ 12 destroys some
  // temporaries of a co_await full-expression twice.
  auto ex = co_await asio::this_coro::executor;
  call_options options;
  auto op =
      async_call(ex, std::move(options), asio::use_awaitable, std::move(fn), std::move(args)...);
  co_return co_await std::move(op);
}

/// `co_await async_call(options, fn, args...)`.
template <typename F, typename... Args>
requires(std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>) auto async_call(
    call_options options, F fn, Args... args)
    -> asio::awaitable<std::invoke_result_t<std::decay_t<F>&, std::decay_t<Args>&...>> {
  auto ex = co_await asio::this_coro::executor;
  auto op =
      async_call(ex, std::move(options), asio::use_awaitable, std::move(fn), std::move(args)...);
  co_return co_await std::move(op);
}

/// Call first in `main` of a program that uses the spawn start method. In a child started by
/// the spawn method it runs the requested function and exits (it never returns there);
/// otherwise it returns at once.
void worker_hook(int argc, char** argv);

}  // namespace coproc

#define COPROC_DETAIL_CONCAT2(a, b) a##b
#define COPROC_DETAIL_CONCAT(a, b) COPROC_DETAIL_CONCAT2(a, b)

/// Registers a function (by name) for the spawn start method. Use at namespace scope, once
/// per function: `COPROC_REGISTER(square);` or `COPROC_REGISTER(ns::square);`. Parameter and
/// result types must be encodable; the function must not be overloaded.
#define COPROC_REGISTER(fn)                                                               \
  [[maybe_unused]] static const bool COPROC_DETAIL_CONCAT(coproc_registered_, __LINE__) = \
      ::coproc::detail::register_function_v<&fn>(#fn)
