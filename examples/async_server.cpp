// async_server: a TCP server on one io_context whose requests are either computed in a process
// pool or streamed from a child program, while the event loop stays free for everyone else.
//
//   "fib N"  computes fib(N) in a pool worker (`co_await pool.submit(fib, n)`); a task that
//            throws (N out of range) arrives as its exception and becomes the reply
//   "run"    streams a child program's output to the client line by line as it is printed
//            (a fixed command: a server must not run what a client sends it)
//
// The program starts the server on 127.0.0.1 (an ephemeral port), then a few clients with
// concurrent requests of both kinds, prints their replies, and shuts down: acceptor, pool.
#include <coproc/coproc.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace cp = coproc;
using asio::ip::tcp;

std::uint64_t fib(int n) {
  if (n < 0 || n > 35) throw std::out_of_range("fib: N must be in 0..35, not " + std::to_string(n));
  return n < 2 ? static_cast<std::uint64_t>(n) : fib(n - 1) + fib(n - 2);
}

// The command behind "run": five lines, 50 ms apart, so the streaming shows.
cp::command run_command() {
  return cp::command::shell("for i in 1 2 3 4 5; do echo \"line $i\"; sleep 0.05; done")
      .std_out(cp::stdio::pipe());
}

// Replies are built in named strings, not temporaries, in co_await expressions (g++ 12).
asio::awaitable<void> send(tcp::socket& sock, const std::string& text) {
  co_await asio::async_write(sock, asio::buffer(text), asio::use_awaitable);
}

// One request per connection: read a line, reply, close.
asio::awaitable<void> session(tcp::socket sock, cp::process_pool& pool) {
  std::string request;
  co_await asio::async_read_until(sock, asio::dynamic_buffer(request), '\n', asio::use_awaitable);
  request.resize(request.find('\n'));

  if (request.starts_with("fib ")) {
    int n = -1;
    std::from_chars(request.data() + 4, request.data() + request.size(), n);
    std::string reply;
    try {
      // The worker computes; this coroutine is suspended, and the loop serves other clients.
      const std::uint64_t value = co_await pool.submit(fib, n);
      reply = "fib(" + std::to_string(n) + ") = " + std::to_string(value) + '\n';
    } catch (const std::out_of_range& e) {  // thrown in the worker, rethrown here
      reply = std::string("error: ") + e.what() + '\n';
    }
    co_await send(sock, reply);
  } else if (request == "run") {
    cp::child c = cp::spawn(sock.get_executor(), run_command());
    while (auto line = co_await c.std_out().async_read_line()) {
      line->push_back('\n');
      co_await send(sock, *line);
    }
    const cp::exit_status st = co_await c.async_wait();
    const std::string status = "[" + st.to_string() + "]\n";
    co_await send(sock, status);
  } else {
    const std::string reply = "error: unknown request \"" + request + "\"\n";
    co_await send(sock, reply);
  }
  // shutdown, not only close: a pool worker forked later (a replacement) holds a copy of this
  // descriptor, and the client must see the end of the reply now.
  sock.shutdown(tcp::socket::shutdown_send);
}

asio::awaitable<void> server(tcp::acceptor& acceptor, cp::process_pool& pool) {
  for (;;) {
    auto [ec, sock] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
    if (ec) break;  // the acceptor was closed: shutting down
    asio::co_spawn(acceptor.get_executor(), session(std::move(sock), pool),
                   [](std::exception_ptr e) {
                     try {
                       if (e) std::rethrow_exception(e);
                     } catch (const std::exception& x) {
                       std::cerr << "session: " << x.what() << '\n';
                     }
                   });
  }
}

// A client prints each line of the reply as it arrives, tagged with its number and request.
asio::awaitable<std::size_t> client(tcp::endpoint at, int id, std::string request) {
  tcp::socket sock(co_await asio::this_coro::executor);
  co_await sock.async_connect(at, asio::use_awaitable);
  const std::string tag = "  client " + std::to_string(id) + " [" + request + "] ";
  request.push_back('\n');
  co_await send(sock, request);
  std::string buf;
  std::size_t lines = 0;
  for (;;) {
    auto [ec, n] = co_await asio::async_read_until(sock, asio::dynamic_buffer(buf), '\n',
                                                   asio::as_tuple(asio::use_awaitable));
    if (ec) break;  // eof: the reply is complete
    std::cout << tag << buf.substr(0, n - 1) << '\n';
    buf.erase(0, n);
    ++lines;
  }
  co_return lines;
}

int main() {
  asio::io_context ctx;
  // The pool first: its workers are forked now, before any socket is open.
  cp::process_pool pool(ctx.get_executor(), {.workers = 2, .name = "fib"});
  tcp::acceptor acceptor(ctx, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const tcp::endpoint at = acceptor.local_endpoint();
  std::cout << "listening on " << at << '\n';

  asio::co_spawn(ctx, server(acceptor, pool), asio::detached);

  const std::vector<std::string> requests = {"fib 32", "run", "fib 25", "run", "fib 99", "hello"};
  std::size_t pending = requests.size(), lines = 0;
  int failures = 0;
  for (std::size_t i = 0; i < requests.size(); ++i)
    asio::co_spawn(
        ctx, client(at, static_cast<int>(i + 1), requests[i]),
        [&](std::exception_ptr e, std::size_t n) {
          if (e) {
            ++failures;
            try {
              std::rethrow_exception(e);
            } catch (const std::exception& x) {
              std::cerr << "client: " << x.what() << '\n';
            }
          }
          lines += n;
          if (--pending == 0) {  // every reply is in: stop accepting, let the pool wind down
            acceptor.close();
            pool.async_shutdown(false, [] { std::cout << "pool shut down\n"; });
          }
        });
  ctx.run();  // returns once the server, the clients and the pool are done
  std::cout << requests.size() << " requests, " << lines << " reply lines\n";
  return failures == 0 && lines == 16 ? 0 : 1;
}
