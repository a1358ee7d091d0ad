/// The seccomp allowlists of the domains, as data (docs/toolstack.md,
/// "Sandbox"): each system call a domain may make, with why it needs it.
/// Anything else kills the domain (SECCOMP_RET_KILL_PROCESS). Found by
/// running each domain under `strace -f` through its tests' workloads
/// (format, volume create, fio with verification, qemu-io write, discard,
/// write-zeroes, flush, a storage restart, SIGTERM), and setpriv, which
/// runs first inside the sandbox, then reviewed one by one.
public enum SyscallAllowlist {
    /// One allowed system call.
    public struct Rule: Sendable, Equatable {
        public var name: String
        public var justification: String
        /// Allowed only when this argument (index, value) matches, e.g.
        /// `socket` only for AF_UNIX.
        public var argumentEquals: (index: UInt32, value: UInt64)?

        public static func == (lhs: Rule, rhs: Rule) -> Bool {
            lhs.name == rhs.name && lhs.argumentEquals?.index == rhs.argumentEquals?.index
                && lhs.argumentEquals?.value == rhs.argumentEquals?.value
        }
    }

    /// AF_UNIX: the only socket family a domain opens.
    public static let addressFamilyUnix: UInt64 = 1

    private static func rule(_ name: String, _ why: String) -> Rule { Rule(name: name, justification: why) }

    /// What every Swift executable of this package needs to start, run
    /// threads and exit, whichever domain it is.
    public static let runtime: [Rule] = [
        rule("execve", "bwrap installs the filter before it executes setpriv, which executes the domain"),
        rule("prctl", "setpriv: no_new_privs, bounding set; cryptd: PR_SET_DUMPABLE 0"),
        rule("capget", "setpriv drops every capability"),
        rule("capset", "setpriv drops every capability"),
        rule("getresuid", "setpriv drops to the domain's user"),
        rule("getresgid", "setpriv drops to the domain's group"),
        rule("setresuid", "setpriv drops to the domain's user (cannot regain root afterwards)"),
        rule("setresgid", "setpriv drops to the domain's group"),
        rule("setgroups", "setpriv clears supplementary groups"),
        rule("fstatfs", "setpriv checks /proc"),
        rule("connect", "Unix sockets only: setpriv asks nscd; cryptd connects to the storage socket"),
        rule("brk", "malloc grows the heap"),
        rule("mmap", "the dynamic loader maps libraries; malloc; thread stacks"),
        rule("munmap", "malloc and the loader release mappings"),
        rule("mprotect", "the loader applies RELRO; thread stack guard pages"),
        rule("mremap", "realloc of large buffers"),
        rule("madvise", "malloc returns memory; cryptd marks secrets MADV_DONTDUMP"),
        rule("arch_prctl", "the loader sets the thread pointer (FS base)"),
        rule("set_tid_address", "libc start-up"),
        rule("set_robust_list", "libc start-up and every new thread"),
        rule("rseq", "glibc registers restartable sequences per thread"),
        rule("prlimit64", "libc reads the stack limit at start-up"),
        rule("access", "the loader checks /etc/ld.so.preload"),
        rule("openat", "the loader opens libraries; the domain opens its disks or state files"),
        rule("newfstatat", "the loader and Foundation stat files"),
        rule("readlink", "the Swift runtime resolves /proc/self/exe"),
        rule("read", "libraries at load; NBD requests and replies on sockets; files"),
        rule("pread64", "the loader reads ELF headers; disk and pool reads"),
        rule("write", "NBD replies and requests on sockets; logs on standard error"),
        rule("close", "files and sockets"),
        rule("lseek", "Foundation file handles"),
        rule("fcntl", "descriptor flags (FD_CLOEXEC, O_NONBLOCK)"),
        rule("ioctl", "terminal checks on standard error; BLKGETSIZE64 on block devices"),
        rule("getrandom", "Swift hashing seeds; nonces and keys in the crypt domain"),
        rule("sched_getaffinity", "Dispatch and Foundation size thread pools by CPU count"),
        rule("sched_yield", "spin locks in the runtime back off"),
        rule("futex", "mutexes and conditions between the server's threads"),
        rule("clone3", "worker threads (pthread_create)"),
        rule("clone", "worker threads with an older glibc"),
        rule("gettid", "the runtime and logging name threads"),
        rule("getpid", "logging; raise()"),
        rule("exit", "a thread ends"),
        rule("exit_group", "the process ends"),
        rule("rt_sigaction", "SIGPIPE is ignored; the runtime's crash handlers"),
        rule("rt_sigprocmask", "termination signals are blocked in every thread"),
        rule("rt_sigtimedwait", "the main thread waits for SIGTERM (sigwait)"),
        rule("rt_sigreturn", "return from a signal handler"),
        rule("sigaltstack", "the Swift runtime's crash handler stack"),
        rule("restart_syscall", "a sleep interrupted by a stop signal resumes"),
        rule("clock_gettime", "timeouts and backoff when the vDSO is unavailable"),
        rule("clock_nanosleep", "reconnect backoff and polling sleeps"),
        rule("nanosleep", "usleep in polling loops"),
        rule("poll", "socket readiness with a timeout"),
        rule("ppoll", "socket readiness with a timeout"),
        Rule(name: "socket", justification: "Unix sockets only: no network", argumentEquals: (0, addressFamilyUnix)),
        rule("setsockopt", "socket timeouts and buffer sizes"),
        rule("getsockopt", "SO_PEERCRED of consumers; socket errors"),
        rule("getpeername", "logging the peer of a connection"),
        rule("sendto", "send() of NBD messages"),
        rule("recvfrom", "recv() of NBD messages"),
        rule("shutdown", "closing connections on stop or protocol errors"),
    ]

    /// The storage domain: serves its disks on its Unix socket.
    public static let storage: [Rule] = runtime + [
        rule("bind", "the storage socket"),
        rule("listen", "the storage socket"),
        rule("accept", "connections from the crypt domain"),
        rule("accept4", "connections from the crypt domain"),
        rule("unlink", "a stale socket file; the socket file at shutdown"),
        rule("pwrite64", "writes to the disks"),
        rule("preadv2", "reads with RWF_NOWAIT, run inline when the page cache has the data"),
        rule("pwritev2", "writes with RWF_NOWAIT, run inline when they need not wait"),
        rule("sendfile", "large READs the page cache holds go from it to the socket uncopied"),
        rule("cachestat", "whether the page cache holds all of a large READ, so that sendfile will not wait for the disk"),
        rule("pipe2", "one pipe per connection for spliced WRITEs on a memory file system"),
        rule("splice", "large WRITE payloads go from the socket through the pipe into the file, copied once"),
        rule("fdatasync", "NBD_CMD_FLUSH and FUA writes"),
        rule("fsync", "NBD_CMD_FLUSH on block devices"),
        rule("fallocate", "NBD_CMD_TRIM and WRITE_ZEROES punch holes"),
    ]

    /// The crypt domain: a client of the storage socket, a server of the
    /// volume sockets, and its trust anchor in its state directory.
    public static let crypt: [Rule] = runtime + [
        rule("bind", "one socket per volume"),
        rule("listen", "one socket per volume"),
        rule("accept", "consumer connections"),
        rule("accept4", "consumer connections"),
        rule("chmod", "volume sockets get mode 0660"),
        rule("unlink", "stale and closed volume sockets"),
        rule("mkdir", "the serve directory if absent"),
        rule("rename", "the trust anchor is replaced atomically"),
        rule("fsync", "the trust anchor reaches the disk before it is relied on"),
        rule("fdatasync", "the trust anchor reaches the disk before it is relied on"),
        rule("pwrite64", "the trust anchor file"),
        rule("ftruncate", "the trust anchor file"),
        rule("mlock", "secret pages stay out of swap"),
        rule("munlock", "secret pages are released"),
        rule("mlockall", "the process's memory stays out of swap"),
        rule("pipe2", "one pipe per storage connection for lent WRITE payloads"),
        rule("vmsplice", "large sealed WRITE payloads go into the pipe as page references"),
        rule("splice", "and from the pipe to the storage socket, uncopied"),
    ]

    /// The rules of `role`.
    public static func rules(for role: DomainRole) -> [Rule] {
        switch role {
        case .storage: storage
        case .crypt: crypt
        }
    }

    /// The names allowed for `role`, sorted, without duplicates: what the
    /// canonical configuration records.
    public static func names(for role: DomainRole) -> [String] {
        Array(Set(rules(for: role).map { rule in
            rule.argumentEquals.map { "\(rule.name)[\($0.index)=\($0.value)]" } ?? rule.name
        })).sorted()
    }
}
