// pipe_duplex: Python's `parent_conn, child_conn = Pipe()` between a parent and a child
// process, both ways.
//
//   1. blocking, as in Python: the child sends [42, None, 'hello'] and a struct, the parent
//      replies, the child answers; then the parent sees end-of-stream (Python: EOFError)
//   2. the same conversation with the parent in a coroutine: co_await async_receive and
//      async_send on an io_context, and co_await async_join
//
// The child runs plain blocking code: a forked child must not use the parent's io_context.
#include <coproc/coproc.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <exception>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace asio = boost::asio;
namespace cp = coproc;

// A plain aggregate: encodable without any code (Boost.PFR walks its fields).
struct reading {
  std::string sensor;
  double celsius = 0;
  std::vector<int> samples;
};

// Python's [42, None, 'hello'].
using python_list = std::tuple<int, std::optional<int>, std::string>;

// def f(conn): runs in the child.
void talk_to_parent(cp::connection& conn) {
  conn.send(python_list{42, std::nullopt, "hello"});
  conn.send(reading{"t1", 21.5, {20, 21, 23}});
  const auto reply = conn.receive<std::string>();
  conn.send(static_cast<int>(reply.size()));  // the answer: the reply's length
  conn.close();  // as in Python; the child's descriptors would also close when it exits
}

std::ostream& operator<<(std::ostream& os, const reading& r) {
  os << r.sensor << ' ' << r.celsius << " C, samples";
  for (int s : r.samples) os << ' ' << s;
  return os;
}

// 1. The parent blocks, as Python's recv() does.
bool blocking(const cp::executor_type& ex) {
  auto [parent_conn, child_conn] = cp::make_pipe(ex);
  // Process(target=f, args=(child_conn,)): std::ref, so the parent can close its copy below.
  cp::process p(ex, talk_to_parent, std::ref(child_conn));
  p.start();
  // The child has its own copy now. Closing the parent's makes the child's exit end the
  // stream here; otherwise the last receive below would wait for ever.
  child_conn.close();

  const auto [number, none, text] = parent_conn.receive<python_list>();
  std::cout << "  recv(): [" << number << ", " << (none ? "?" : "None") << ", '" << text << "']\n";
  std::cout << "  recv(): " << parent_conn.receive<reading>() << '\n';
  parent_conn.send(std::string("thanks, child"));
  std::cout << "  answer: " << parent_conn.receive<int>() << '\n';
  try {
    parent_conn.receive<int>();
  } catch (const boost::system::system_error& e) {  // Python: EOFError
    std::cout << "  then: " << (e.code() == asio::error::eof ? "end of stream" : e.what()) << '\n';
  }
  return p.join().success();
}

// 2. The parent in a coroutine: nothing blocks the io_context.
asio::awaitable<bool> asynchronous() {
  auto ex = co_await asio::this_coro::executor;
  auto [parent_conn, child_conn] = cp::make_pipe(ex);
  cp::process p(ex, talk_to_parent, std::ref(child_conn));
  p.start();
  child_conn.close();

  const python_list first = co_await parent_conn.async_receive<python_list>();
  std::cout << "  async_receive(): [" << std::get<0>(first) << ", None, '" << std::get<2>(first)
            << "']\n";
  const reading r = co_await parent_conn.async_receive<reading>();
  std::cout << "  async_receive(): " << r << '\n';
  const std::string reply = "thanks again";  // a named local, not a temporary, in co_await
  co_await parent_conn.async_send(reply);
  const int answer = co_await parent_conn.async_receive<int>();
  std::cout << "  answer: " << answer << '\n';
  // The error-code form instead of an exception: eof once the child has gone.
  auto [ec, ignored] = co_await parent_conn.async_receive<int>(asio::as_tuple(asio::use_awaitable));
  std::cout << "  then: " << (ec == asio::error::eof ? "end of stream" : ec.message()) << '\n';
  const cp::exit_status st = co_await p.async_join();
  std::cout << "  " << p.name() << ": " << st.to_string() << '\n';
  co_return st.success();
}

int main() {
  asio::io_context ctx;
  std::cout << "blocking:\n";
  bool ok = blocking(ctx.get_executor());

  std::cout << "co_await:\n";
  asio::co_spawn(ctx, asynchronous(), [&](std::exception_ptr e, bool result) {
    ok = ok && result;
    if (e) std::rethrow_exception(e);
  });
  ctx.run();
  return ok ? 0 : 1;
}
