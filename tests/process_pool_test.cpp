#include <coproc/process.hpp>
#include <gtest/gtest.h>
int main(int argc, char** argv) {
  coproc::worker_hook(argc, argv);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
