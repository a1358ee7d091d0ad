#define _GNU_SOURCE
#include "CSystemShims.h"
#include <malloc.h>
#include <sys/prctl.h>
#include <sys/random.h>

int bulkhead_set_not_dumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); }

ssize_t bulkhead_getrandom(void *buffer, size_t length) { return getrandom(buffer, length, 0); }

int bulkhead_limit_malloc_arenas(int count) { return mallopt(M_ARENA_MAX, count); }

int bulkhead_set_mmap_threshold(size_t bytes) { return mallopt(M_MMAP_THRESHOLD, (int)bytes); }
