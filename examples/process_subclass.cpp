// process_subclass: Python's "subclass Process and override run()" style, translated.
//
//   class Squarer(Process):
//       def __init__(self, numbers):
//           super().__init__(name="squarer")
//           self.numbers = numbers
//       def run(self):
//           print(self.name, [n * n for n in self.numbers])
//
// In coproc the object is any type with a `run()` member, handed to `coproc::process`; its
// state is set up in the parent (in its constructor) and the child runs `run()` on its copy.
// The name comes from `process_options` and is also the child's kernel process name
// (`ps -o comm`, /proc/PID/comm).
#include <coproc/coproc.hpp>

#include <boost/asio/io_context.hpp>

#include <iostream>
#include <string>
#include <vector>

#include <sys/prctl.h>
#include <unistd.h>

namespace asio = boost::asio;
namespace cp = coproc;

// What the kernel calls the calling process (set by coproc from the process's name).
std::string kernel_name() {
  char name[16] = {};
  ::prctl(PR_GET_NAME, name, 0, 0, 0);
  return name;
}

int calls = 0;  // changed by the child's run(): the parent's copy stays 0

struct squarer {
  explicit squarer(int up_to) {  // __init__: runs in the parent
    for (int n = 1; n <= up_to; ++n) numbers.push_back(n);
  }
  void run() {  // runs in the child
    ++calls;
    std::cout << kernel_name() << " (pid " << ::getpid() << "): ";
    for (int n : numbers) std::cout << n * n << ' ';
    std::cout << "(calls in the child: " << calls << ")\n";
  }
  std::vector<int> numbers;
};

int main() {
  asio::io_context ctx;

  // Squarer(5).start(); join()
  cp::process named(ctx.get_executor(), cp::process_options{.name = "squarer"}, squarer(5));
  named.start();
  cp::exit_status st = named.join();
  std::cout << named.name() << ": " << st.to_string() << "; calls in the parent: " << calls << '\n';

  // Without a name, processes are called process-1, process-2, ... in the order they are made.
  cp::process unnamed(ctx.get_executor(), squarer(3));
  std::cout << "unnamed process: " << unnamed.name() << '\n';
  unnamed.start();
  const bool ok = st.success() && unnamed.join().success() && calls == 0;
  return ok ? 0 : 1;
}
