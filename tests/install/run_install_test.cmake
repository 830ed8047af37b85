# Installs the coproc build at COPROC_BINARY_DIR into a fresh prefix under WORK_DIR, then
# configures, builds and runs tests/install/consumer against it with find_package(coproc).
# Run by ctest as `cmake -D... -P run_install_test.cmake`.
foreach(var COPROC_BINARY_DIR CONSUMER_SOURCE_DIR WORK_DIR CXX_COMPILER HELPER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_install_test.cmake: ${var} is not set")
  endif()
endforeach()
if(NOT CONFIG)
  set(CONFIG RelWithDebInfo)
endif()

set(prefix "${WORK_DIR}/prefix")
set(build "${WORK_DIR}/consumer-build")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

function(step name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install_test: ${name} failed (${rc}):\n${out}")
  endif()
  message(STATUS "install_test: ${name}: ok")
endfunction()

step("cmake --install"
  ${CMAKE_COMMAND} --install "${COPROC_BINARY_DIR}" --prefix "${prefix}" --config "${CONFIG}")

if(NOT EXISTS "${prefix}/include/coproc/coproc.hpp")
  message(FATAL_ERROR "install_test: ${prefix}/include/coproc/coproc.hpp was not installed")
endif()

step("configure consumer"
  ${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${build}"
    "-DCMAKE_PREFIX_PATH=${prefix}"
    "-DCMAKE_BUILD_TYPE=${CONFIG}"
    "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
    "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}"
    "-DCMAKE_EXE_LINKER_FLAGS=${LINKER_FLAGS}"
    # Only the installed package may be found, never this build tree or a user package.
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
step("build consumer" ${CMAKE_COMMAND} --build "${build}" --config "${CONFIG}")

find_program(consumer NAMES coproc_consumer PATHS "${build}" "${build}/${CONFIG}" NO_DEFAULT_PATH)
if(NOT consumer)
  message(FATAL_ERROR "install_test: the consumer executable was not built")
endif()
step("run consumer" "${consumer}" "${HELPER}")
file(REMOVE_RECURSE "${WORK_DIR}")
