/*
 * isa_gate.h: for the tests registered once per kernel level
 * (tests/CMakeLists.txt runs them with TL_ISA=generic, avx2 and avx512): a
 * level this CPU lacks is a skip, not a silent re-run of a lower level.
 */
#ifndef TL_TEST_ISA_GATE_H
#define TL_TEST_ISA_GATE_H

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "tokenlab/model.h"

/* The exit code ctest counts as a skip (SKIP_RETURN_CODE in tests/CMakeLists.txt). */
#define TL_TEST_SKIP_CODE 77

/* 1 (after printing why) when TL_ISA names a level other than the one the
 * engine runs, i.e. one the CPU lacks; else 0, after printing the level. */
static inline int tl_test_isa_unavailable(void) {
    const char *want = getenv("TL_ISA");
    if (want && *want && strcasecmp(want, tl_isa_name()) != 0) {
        printf("SKIP: TL_ISA=%s, but this CPU runs %s kernels at most\n", want, tl_isa_name());
        return 1;
    }
    printf("kernel level: %s\n", tl_isa_name());
    return 0;
}

#endif
