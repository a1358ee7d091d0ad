#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization

// Minimal stand-ins for the root package's Sockets and Threads targets,
// which are not library products; the system calls are the same.

/// Starts a detached pthread running `body`.
func startThread(_ body: @escaping @Sendable () -> Void) {
    final class Box: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    var thread = pthread_t()
    let result = pthread_create(&thread, &attributes, { raw in
        Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
        return nil
    }, box)
    precondition(result == 0, "pthread_create failed: \(result)")
}

/// Binds and listens on a Unix socket, replacing a stale socket file.
func listenUnix(path: String) -> Int32 {
    unlink(path)
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    precondition(fd >= 0, "socket: errno \(errno)")
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    precondition(bytes.count < MemoryLayout.size(ofValue: address.sun_path), "socket path too long")
    // SAFETY: sun_path is 108 bytes; fewer are copied and the rest stay zero.
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    precondition(bound == 0, "bind \(path): errno \(errno)")
    precondition(listen(fd, 64) == 0, "listen: errno \(errno)")
    return fd
}

/// Reads what is available; 0 at end of stream or on error.
func readSome(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
    while true {
        let count = read(fd, buffer.baseAddress, buffer.count)
        if count >= 0 { return count }
        if errno != EINTR { return 0 }
    }
}

/// Writes all of `buffer`; false if the peer went away.
func writeAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) -> Bool {
    var done = 0
    while done < buffer.count {
        let count = send(fd, buffer.baseAddress! + done, buffer.count - done, Int32(MSG_NOSIGNAL))
        if count < 0 {
            if errno == EINTR { continue }
            return false
        }
        done += count
    }
    return true
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBytes { writeAll(fd, $0) }
}

/// A value behind a lock: a pthread mutex, like the root package's
/// `Guarded` (which the real server would use), or the standard library's
/// `Synchronization.Mutex`, to compare the two under this workload.
final class Locked<Value: ~Copyable>: @unchecked Sendable {
    // SAFETY: `value` is only touched with the lock held; the pthread mutex
    // lives in stable heap memory allocated here and freed in deinit.
    private var value: Value
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let standard = Mutex(())
    private let useStandard: Bool

    init(_ value: consuming Value, standardMutex: Bool) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        useStandard = standardMutex
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<T>(_ body: (inout Value) -> T) -> T {
        if useStandard {
            return standard.withLock { _ in body(&value) }
        }
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body(&value)
    }
}
