// coproc: child processes as first-class citizens of the Boost.Asio event loop.
#pragma once

#include <coproc/child.hpp>
#include <coproc/codec.hpp>
#include <coproc/command.hpp>
#include <coproc/config.hpp>
#include <coproc/error.hpp>
#include <coproc/exit_status.hpp>
#include <coproc/future.hpp>
#include <coproc/merged_reader.hpp>
#include <coproc/pipe.hpp>
#include <coproc/pipeline.hpp>
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/process_pool.hpp>
#include <coproc/result_stream.hpp>
#include <coproc/run.hpp>
#include <coproc/stream.hpp>
#include <coproc/thread_pool.hpp>
#include <coproc/wait.hpp>
