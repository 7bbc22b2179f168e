# CMake toolchain file: cross-builds tokenlab for 64-bit Arm Linux (Graviton, Ampere) on a
# Debian 12 x86-64 machine, with Debian's gcc-aarch64-linux-gnu against the arm64 libraries
# installed multiarch (dpkg --add-architecture arm64; libopenblas-pthread-dev:arm64 and the
# others scripts/test-arm64.sh installs) in /usr/lib/aarch64-linux-gnu. The programs it builds
# run under qemu-user: ctest prefixes every test executable with CMAKE_CROSSCOMPILING_EMULATOR.
#
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=scripts/toolchain-aarch64.cmake \
#         -DTL_ENGINE_ONLY=ON -DTL_MPI=OFF
#
# The emulator finds the arm64 dynamic loader and libraries at their multiarch places on this
# machine (/lib/ld-linux-aarch64.so.1, /usr/lib/aarch64-linux-gnu), so it needs no -L prefix.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)

find_program(TL_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static)
if(TL_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${TL_QEMU_AARCH64})
endif()

# pkg-config answers for arm64: only the arm64 .pc files (and the architecture-free ones).
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
