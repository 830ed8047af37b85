// Common definitions shared by every coproc header.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/error_code.hpp>

namespace coproc {

namespace asio = boost::asio;
using boost::system::error_code;

/// The executor every coproc I/O object is bound to.
using executor_type = asio::any_io_executor;

/// The completion token used when an `async_` function is called without one:
/// `co_await x.async_op()` works inside an `asio::awaitable` coroutine.
using default_token = asio::use_awaitable_t<>;

}  // namespace coproc
