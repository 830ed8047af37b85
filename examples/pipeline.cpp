// pipeline: `a | b | c` connected child to child, with every stage's status and pipefail.
//
//   printf ... | sort | uniq -c      the data never passes through this process
//   ... | grep nothing | wc -l       grep exits 1: the last stage succeeds, pipefail does not
#include <coproc/coproc.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <iostream>

namespace asio = boost::asio;
namespace cp = coproc;

asio::awaitable<void> pipelines() {
  // sh: printf 'b\na\nb\n' | sort | uniq -c
  cp::pipeline_result counted = co_await cp::async_run(
      cp::command{"printf", "b\\na\\nb\\n"} | cp::command{"sort"} | cp::command{"uniq", "-c"});
  std::cout << counted.check().out;  // check(): every stage exited with 0 (pipefail)

  cp::pipeline_result r = co_await cp::async_run(
      cp::command{"printf", "x\\ny\\n"} | cp::command{"grep", "nothing"} | cp::command{"wc", "-l"});
  for (std::size_t i = 0; i < r.statuses.size(); ++i)
    std::cout << "stage " << i + 1 << " (" << r.programs[i] << "): " << r.statuses[i].to_string()
              << '\n';
  std::cout << "last stage: " << r.status().to_string() << ", output " << r.out;
  try {
    r.check();
  } catch (const cp::process_error& e) {
    std::cout << "pipefail: " << e.what() << '\n';
  }
}

int main() {
  asio::io_context ctx;
  asio::co_spawn(ctx, pipelines(), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
  ctx.run();
}
