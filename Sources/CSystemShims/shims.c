#define _GNU_SOURCE
#include "CSystemShims.h"
#include <fcntl.h>
#include <malloc.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>

int bulkhead_set_not_dumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); }

ssize_t bulkhead_getrandom(void *buffer, size_t length) { return getrandom(buffer, length, 0); }

int bulkhead_limit_malloc_arenas(int count) { return mallopt(M_ARENA_MAX, count); }

int bulkhead_set_mmap_threshold(size_t bytes) { return mallopt(M_MMAP_THRESHOLD, (int)bytes); }

long bulkhead_filesystem_type(int fd) {
    struct statfs info;
    if (fstatfs(fd, &info) != 0) return -1;
    return (long)info.f_type;
}

ssize_t bulkhead_pread_flags(int fd, void *buffer, size_t length, off_t offset, int flags) {
    struct iovec vector = {.iov_base = buffer, .iov_len = length};
    return preadv2(fd, &vector, 1, offset, flags);
}

ssize_t bulkhead_pwrite_flags(int fd, const void *buffer, size_t length, off_t offset, int flags) {
    struct iovec vector = {.iov_base = (void *)buffer, .iov_len = length};
    return pwritev2(fd, &vector, 1, offset, flags);
}

#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif

long long bulkhead_cached_pages(int fd, unsigned long long offset, unsigned long long length) {
    struct {
        unsigned long long offset, length;
    } range = {offset, length};
    struct {
        unsigned long long cached, dirty, writeback, evicted, recentlyEvicted;
    } status;
    if (syscall(__NR_cachestat, fd, &range, &status, 0) != 0) return -1;
    return (long long)status.cached;
}

ssize_t bulkhead_splice_from_socket(int socket, int pipe, size_t length) {
    return splice(socket, NULL, pipe, NULL, length, SPLICE_F_MOVE);
}

ssize_t bulkhead_splice_to_file(int pipe, int file, long long offset, size_t length) {
    loff_t position = offset;
    return splice(pipe, NULL, file, &position, length, SPLICE_F_MOVE);
}

int bulkhead_pipe(int ends[2]) { return pipe2(ends, O_CLOEXEC); }

int bulkhead_resize_pipe(int fd, int bytes) {
    int granted = fcntl(fd, F_SETPIPE_SZ, bytes);
    return granted > 0 ? granted : fcntl(fd, F_GETPIPE_SZ);
}

ssize_t bulkhead_vmsplice(int pipe, const void *buffer, size_t length) {
    struct iovec vector = {(void *)buffer, length};
    return vmsplice(pipe, &vector, 1, 0);
}

ssize_t bulkhead_splice_to_socket(int pipe, int socket, size_t length) {
    return splice(pipe, NULL, socket, NULL, length, SPLICE_F_MOVE);
}
