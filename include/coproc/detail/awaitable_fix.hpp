// Boost 1.81 cannot `co_await` an asynchronous operation whose completion signature is
// `void(std::exception_ptr, T)`: the resume step of its handler dereferences the result struct
// instead of the exception pointer inside it, which does not compile. coproc's futures are such
// operations, so for exactly that Boost version this header adds a more specialised handler that
// checks the exception pointer. It changes nothing for any signature that already compiled.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/version.hpp>

#include <exception>
#include <utility>

#if BOOST_VERSION == 108100
namespace boost::asio::detail {

template <typename T, typename Executor>
class awaitable_async_op_handler<void(std::exception_ptr, T), Executor>
    : public awaitable_thread<Executor> {
 public:
  struct result_type {
    std::exception_ptr* ex_;
    T* value_;
  };

  awaitable_async_op_handler(awaitable_thread<Executor>* h, result_type& result)
      : awaitable_thread<Executor>(std::move(*h)), result_(result) {}

  void operator()(std::exception_ptr ex, T value) {
    result_.ex_ = &ex;
    result_.value_ = &value;
    this->entry_point()->top_of_stack_->attach_thread(this);
    this->entry_point()->top_of_stack_->clear_cancellation_slot();
    this->pump();
  }

  static T resume(result_type& result) {
    if (*result.ex_) std::rethrow_exception(std::exchange(*result.ex_, nullptr));
    return std::move(*result.value_);
  }

 private:
  result_type& result_;
};

}  // namespace boost::asio::detail
#endif
