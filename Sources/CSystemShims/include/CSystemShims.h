// Thin shims for Linux calls that Swift cannot reach directly: variadic
// functions (prctl), declarations hidden behind _GNU_SOURCE, and
// <malloc.h>, which Glibc's module leaves out.
#ifndef BULKHEAD_C_SYSTEM_SHIMS_H
#define BULKHEAD_C_SYSTEM_SHIMS_H

#include <stddef.h>
#include <sys/types.h>

/// prctl(PR_SET_DUMPABLE, 0): no core dumps, no ptrace by other users.
int bulkhead_set_not_dumpable(void);

/// getrandom(2) with flags 0: blocks until the pool is initialised.
ssize_t bulkhead_getrandom(void *buffer, size_t length);

/// mallopt(M_ARENA_MAX, count): at most `count` malloc arenas. glibc's
/// default (8 per core) lets a daemon with many request threads keep
/// hundreds of megabytes in per-thread arenas. Returns 1 on success.
int bulkhead_limit_malloc_arenas(int count);

/// mallopt(M_MMAP_THRESHOLD, bytes): allocations of at least `bytes` get
/// their own mapping, returned to the system when freed. Setting it also
/// turns off glibc's dynamic threshold, which otherwise rises to the size of
/// each mapped block freed (up to 32 MiB) and so moves large buffers into
/// the heap, where small allocations split the freed ones and the heap
/// grows with every large request. Returns 1 on success.
int bulkhead_set_mmap_threshold(size_t bytes);

/// fstatfs(2)'s f_type (a file system magic number, <linux/magic.h>), or
/// -1 with errno set.
long bulkhead_filesystem_type(int fd);

/// preadv2(2) and pwritev2(2) of one buffer with RWF_* `flags`, which
/// <sys/uio.h> declares only under _GNU_SOURCE. -1 with errno set on error.
ssize_t bulkhead_pread_flags(int fd, void *buffer, size_t length, off_t offset, int flags);
ssize_t bulkhead_pwrite_flags(int fd, const void *buffer, size_t length, off_t offset, int flags);

/// cachestat(2) (Linux 6.5): how many pages of [offset, offset + length)
/// of `fd` are in the page cache, or -1 with errno set (ENOSYS on older
/// kernels, which glibc does not wrap).
long long bulkhead_cached_pages(int fd, unsigned long long offset, unsigned long long length);

/// splice(2) from a socket into the write end of a pipe: up to `length`
/// bytes, page references rather than copies where the socket's buffers
/// allow. -1 with errno set on error; 0 at the end of the stream.
ssize_t bulkhead_splice_from_socket(int socket, int pipe, size_t length);

/// splice(2) from the read end of a pipe into a file at `offset`: up to
/// `length` bytes. -1 with errno set on error.
ssize_t bulkhead_splice_to_file(int pipe, int file, long long offset, size_t length);

/// vmsplice(2) of one buffer into the write end of a pipe: the pipe takes
/// references to the buffer's pages, not a copy of its bytes, so they must
/// not change until the pipe's reader has consumed them. Up to `length`
/// bytes; -1 with errno set on error.
ssize_t bulkhead_vmsplice(int pipe, const void *buffer, size_t length);

/// splice(2) from the read end of a pipe into a socket: up to `length`
/// bytes, as page references where the socket takes them. -1 with errno
/// set on error.
ssize_t bulkhead_splice_to_socket(int pipe, int socket, size_t length);

/// pipe2(2) with O_CLOEXEC (declared only under _GNU_SOURCE): 0, or -1
/// with errno set.
int bulkhead_pipe(int ends[2]);

/// fcntl(F_SETPIPE_SZ): resizes a pipe to at least `bytes`. Returns the
/// pipe's capacity, resized or not (EPERM past /proc/sys/fs/pipe-max-size
/// leaves it as it was), or -1 with errno set.
int bulkhead_resize_pipe(int fd, int bytes);

#endif
