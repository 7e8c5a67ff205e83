# CPU kernel sources and their ISA flags, included by the Python module's build
# (CMakeLists.txt) and by the C++ ISA self-test (tests/cpp/CMakeLists.txt). Each op's
# kernels are one implementation header (<op>_impl.h) compiled once per ISA by a
# <op>_<isa>.cpp with that ISA's flags (isa/README.md) and chosen at run time
# (dispatch.cpp). Never tune for the build machine: a wheel built here must run on any
# x86-64 / aarch64.
#
# Sets NV_CPU_SOURCES (baseline files first: see the link-order note in CMakeLists.txt),
# NV_CPU_DEFINITIONS, NV_X86, NV_ARM.
file(GLOB NV_CPU_ALL CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.cpp)
set(NV_CPU_BASE "")
set(NV_CPU_AVX2 "")
set(NV_CPU_AVX512 "")
set(NV_CPU_NEON "")
foreach(f ${NV_CPU_ALL})
  if(f MATCHES "_avx512\\.cpp$")
    list(APPEND NV_CPU_AVX512 ${f})
  elseif(f MATCHES "_avx2\\.cpp$")
    list(APPEND NV_CPU_AVX2 ${f})
  elseif(f MATCHES "_neon\\.cpp$")
    list(APPEND NV_CPU_NEON ${f})
  else()
    list(APPEND NV_CPU_BASE ${f})
  endif()
endforeach()

set(NV_X86 OFF)
set(NV_ARM OFF)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
  set(NV_X86 ON)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64|ARM64")
  set(NV_ARM ON)
endif()
if(NV_X86)
  set_source_files_properties(${NV_CPU_AVX2} PROPERTIES COMPILE_OPTIONS
    "-mavx2;-mfma;-mf16c;-mpopcnt;-mbmi;-mbmi2")
  set_source_files_properties(${NV_CPU_AVX512} PROPERTIES COMPILE_OPTIONS
    "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vpopcntdq;-mavx512bf16;-mavx512vnni;-mavx2;-mfma;-mf16c;-mpopcnt;-mbmi;-mbmi2")
  set(NV_CPU_SOURCES ${NV_CPU_BASE} ${NV_CPU_AVX2} ${NV_CPU_AVX512})
elseif(NV_ARM)
  # Advanced SIMD is part of armv8-a: the NEON files need no extra flags.
  set(NV_CPU_SOURCES ${NV_CPU_BASE} ${NV_CPU_NEON})
else()
  set(NV_CPU_SOURCES ${NV_CPU_BASE})
endif()

set(NV_CPU_DEFINITIONS "")
if(NV_X86)
  set(NV_CPU_DEFINITIONS NESTVEC_X86=1)
elseif(NV_ARM)
  set(NV_CPU_DEFINITIONS NESTVEC_ARM=1)
endif()
