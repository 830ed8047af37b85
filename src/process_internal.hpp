// Helpers shared by the process and pool code in src/ (not part of the public API).
#pragma once

#include <exception>
#include <string>

namespace coproc::detail {

// Blocking write/read of a whole buffer on a socket or pipe (EINTR, EAGAIN handled; no SIGPIPE).
bool write_all(int fd, const char* data, std::size_t n);
bool read_all(int fd, char* data, std::size_t n);
// Fills in the size of a result frame; a result beyond the 4 GiB - 1 limit becomes an
// exception frame saying so.
void fill_header(std::string& frame);
// Sets the calling process's name (first 15 bytes; `ps -o comm`).
void set_process_name(const std::string& name);
// Prints what escaped a process's callable to stderr, as Python prints a child's traceback.
void report_exception(const std::string& name, std::exception_ptr e);
// Flushes stdio and iostreams, then _exit(code).
[[noreturn]] void leave(int code);

}  // namespace coproc::detail
