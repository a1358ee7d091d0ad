import CSystemShims
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Secret bytes in their own pages: locked against swapping (mlock), left
/// out of core dumps (MADV_DONTDUMP), zeroed before they are unmapped, and
/// never printed. Cannot be copied: callers borrow them.
public final class SecretBytes: @unchecked Sendable, CustomStringConvertible {
    // SAFETY: `base` is a private anonymous mapping of `mappedLength` bytes
    // owned by this object; the bytes are written only during init, then
    // only read, until deinit zeroes and unmaps them.
    private let base: UnsafeMutableRawPointer
    private let mappedLength: Int
    public let count: Int
    /// Whether mlock succeeded (it fails past RLIMIT_MEMLOCK for unprivileged users).
    public let isLocked: Bool

    private init(count: Int) {
        precondition(count > 0)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        mappedLength = (count + page - 1) / page * page
        guard let mapped = mmap(nil, mappedLength, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            mapped != MAP_FAILED
        else { fatalError("mmap of \(count) secret bytes failed: errno \(errno)") }
        base = mapped
        self.count = count
        isLocked = mlock(mapped, mappedLength) == 0
        _ = madvise(mapped, mappedLength, MADV_DONTDUMP)
    }

    /// `count` bytes from the kernel's random number generator.
    public static func random(count: Int) -> SecretBytes {
        let secret = SecretBytes(count: count)
        var filled = 0
        while filled < count {
            let result = bulkhead_getrandom(secret.base + filled, count - filled)
            if result < 0 {
                precondition(errno == EINTR, "getrandom failed: errno \(errno)")
                continue
            }
            filled += result
        }
        return secret
    }

    /// Moves bytes into locked memory and zeroes the source.
    public static func taking(_ bytes: inout [UInt8]) -> SecretBytes {
        let secret = SecretBytes(count: bytes.count)
        bytes.withUnsafeMutableBytes { source in
            secret.base.copyMemory(from: source.baseAddress!, byteCount: source.count)
            explicit_bzero(source.baseAddress!, source.count)
        }
        return secret
    }

    /// Borrows the bytes for the duration of `body`.
    public func withUnsafeBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    public var description: String { "SecretBytes(\(count) bytes, redacted)" }

    deinit {
        explicit_bzero(base, mappedLength)
        if isLocked { munlock(base, mappedLength) }
        munmap(base, mappedLength)
    }
}

/// Hardens the current process for holding keys: no core dumps, not
/// ptrace-attachable by other users (PR_SET_DUMPABLE 0), and every page,
/// present and future, locked in memory. Returns what could not be done.
public func hardenProcessForSecrets() -> [String] {
    var problems: [String] = []
    var limit = rlimit(rlim_cur: 0, rlim_max: 0)
    if setrlimit(Int32(RLIMIT_CORE.rawValue), &limit) != 0 { problems.append("cannot disable core dumps") }
    if bulkhead_set_not_dumpable() != 0 { problems.append("cannot clear the dumpable flag") }
    if mlockall(MCL_CURRENT | MCL_FUTURE) != 0 { problems.append("cannot lock memory (mlockall: errno \(errno))") }
    return problems
}
