# The trace tests of `stokectl simulate`, run by ctest as
#   cmake -DSTOKECTL=path -DMODE=trace -DNAME=step -P check.cmake
#   cmake -DSTOKECTL=path -DMODE=errors -P check.cmake
# MODE=trace simulates NAME.csv with spec.yaml and checks the decisions
# NAME.expected lists: each of its lines (`#` lines are the hand calculation
# they come from) must be the output's line for that second. The expected
# values are computed by hand from the rules, never taken from the
# simulator's output: there is no mode that writes them.
# MODE=errors runs every bad/*.csv, which must fail with exit status 1 and
# the message in the matching bad/*.expected, and a few usage errors, which
# must exit with 2.
cmake_minimum_required(VERSION 3.18)
get_filename_component(dir "${CMAKE_CURRENT_LIST_FILE}" DIRECTORY)

function(simulate rc_var out_var err_var)
  execute_process(COMMAND "${STOKECTL}" simulate ${ARGN}
    WORKING_DIRECTORY "${dir}"
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(${rc_var} "${rc}" PARENT_SCOPE)
  set(${out_var} "${out}" PARENT_SCOPE)
  set(${err_var} "${err}" PARENT_SCOPE)
endfunction()

# Compares `actual` with the file `expected` (relative to dir); on a
# difference, leaves the actual text beside the binary for diffing.
function(expect_file what actual expected)
  file(READ "${dir}/${expected}" want)
  if(NOT actual STREQUAL want)
    string(REPLACE "/" "_" flat "${expected}")
    set(got "${CMAKE_CURRENT_BINARY_DIR}/${flat}.actual")
    file(WRITE "${got}" "${actual}")
    message(SEND_ERROR "${what}: output differs from ${expected}; see: diff -u ${dir}/${expected} ${got}")
  endif()
endfunction()

if(NOT STOKECTL)
  message(FATAL_ERROR "-DSTOKECTL=path/to/stokectl is required")
endif()

if(MODE STREQUAL "trace")
  simulate(rc out err -f spec.yaml "${NAME}.csv")
  if(NOT rc EQUAL 0 OR NOT err STREQUAL "")
    message(FATAL_ERROR "simulate ${NAME}.csv: exit ${rc}: ${err}")
  endif()
  string(REPLACE "\n" ";" got_lines "${out}")
  list(GET got_lines 0 header)
  if(NOT header STREQUAL "second,desired,ready,panic")
    message(FATAL_ERROR "simulate ${NAME}.csv: header \"${header}\"")
  endif()
  file(STRINGS "${dir}/${NAME}.expected" want_lines)
  set(checked 0)
  foreach(want ${want_lines})
    if(want MATCHES "^#" OR want STREQUAL "")
      continue()
    endif()
    if(NOT want MATCHES "^([0-9]+),[0-9]+,[0-9]+,[01]$")
      message(FATAL_ERROR "${NAME}.expected: bad line \"${want}\"")
    endif()
    set(second "${CMAKE_MATCH_1}")
    set(found "")
    foreach(got ${got_lines})
      if(got MATCHES "^${second},")
        set(found "${got}")
        break()
      endif()
    endforeach()
    if(NOT found STREQUAL want)
      message(SEND_ERROR "simulate ${NAME}.csv: second ${second}: want ${want}, got \"${found}\"")
    endif()
    math(EXPR checked "${checked} + 1")
  endforeach()
  if(checked LESS 5)
    message(FATAL_ERROR "${NAME}.expected: only ${checked} decisions to check")
  endif()
elseif(MODE STREQUAL "errors")
  file(GLOB bad RELATIVE "${dir}" "${dir}/bad/*.csv")
  list(LENGTH bad n)
  if(n EQUAL 0)
    message(FATAL_ERROR "no bad/*.csv")
  endif()
  foreach(csv ${bad})
    simulate(rc out err -f spec.yaml "${csv}")
    if(NOT rc EQUAL 1 OR NOT out STREQUAL "")
      message(SEND_ERROR "simulate ${csv}: want exit 1 and no output, got exit ${rc}: ${out}")
    endif()
    string(REGEX REPLACE "\\.csv$" ".expected" want "${csv}")
    expect_file("simulate ${csv}" "${err}" "${want}")
  endforeach()
  # Usage errors: exit 2, usage on stderr.
  foreach(args "step.csv" "-f;spec.yaml" "-f;spec.yaml;step.csv;spike.csv"
          "-f;spec.yaml;--tick;1500ms;step.csv" "-f;spec.yaml;--tick;0s;step.csv"
          "-f;spec.yaml;--ready-delay;soon;step.csv" "-f;spec.yaml;--bogus;step.csv"
          "-f;spec.yaml;step.csv;--tick")
    simulate(rc out err ${args})
    if(NOT rc EQUAL 2 OR NOT out STREQUAL "" OR err STREQUAL "")
      message(SEND_ERROR "simulate ${args}: want exit 2 and a message, got exit ${rc}")
    endif()
  endforeach()
  # A missing file and a bad spec are errors, not usage errors.
  simulate(rc out err -f spec.yaml missing.csv)
  if(NOT rc EQUAL 1 OR NOT err STREQUAL "missing.csv: No such file or directory\n")
    message(SEND_ERROR "simulate missing.csv: got exit ${rc}: ${err}")
  endif()
  simulate(rc out err -f bad/spec-max.yaml step.csv)
  if(NOT rc EQUAL 1 OR NOT err MATCHES "^bad/spec-max.yaml:[0-9]+:[0-9]+: spec.scale")
    message(SEND_ERROR "simulate -f bad/spec-max.yaml: got exit ${rc}: ${err}")
  endif()
else()
  message(FATAL_ERROR "-DMODE=trace|errors")
endif()
