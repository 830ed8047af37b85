// Runs the helper program through the installed coproc: `coproc_consumer HELPER`.
#include <coproc/coproc.hpp>

#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: coproc_consumer HELPER\n");
    return 2;
  }
  try {
    auto r = coproc::run(coproc::command{argv[1], "outline", "installed", "exit", "3"});
    if (r.out != "installed\n" || r.status != coproc::exit_status::exited(3)) {
      std::fprintf(stderr, "unexpected result: out=\"%s\" status=%s\n", r.out.c_str(),
                   r.status.to_string().c_str());
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "coproc::run threw: %s\n", e.what());
    return 1;
  }
  std::puts("ok");
  return 0;
}
