#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Starts a detached system thread running `body`. Bulkhead's request
/// paths block in system calls (socket reads, pread, fdatasync), so they run
/// on their own threads rather than on Swift's cooperative pool.
public func startThread(_ body: @escaping @Sendable () -> Void) {
    final class Box: Sendable {
        let body: @Sendable () -> Void
        init(body: @escaping @Sendable () -> Void) {
            self.body = body
        }
    }
    let box = Unmanaged.passRetained(Box(body: body)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    var thread = pthread_t()
    let result = pthread_create(&thread, &attributes, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        box.body()
        return nil
    }, box)
    precondition(result == 0, "pthread_create failed: \(result)")
}

/// A value guarded by a mutex, with a condition variable to wait for it to
/// change: the one synchronisation primitive the blocking code paths need.
public final class Guarded<Value>: @unchecked Sendable {
    // SAFETY: `value` is only touched with `mutex` held; the pthread objects
    // live in stable heap memory allocated here and freed in deinit. The
    // mutex makes every access exclusive, so the runtime's own check of
    // that (swift_beginAccess, about 20 a 4 KiB request, three quarters of
    // them here) is left out.
    @exclusivity(unchecked) private var value: Value
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init(_ value: Value) {
        self.value = value
        // One allocation for both: a Guarded is made per request on the
        // data path (the countdown of a request's storage requests).
        let conditionOffset = Self.conditionOffset
        let raw = UnsafeMutableRawPointer.allocate(
            byteCount: conditionOffset + MemoryLayout<pthread_cond_t>.size,
            alignment: max(MemoryLayout<pthread_mutex_t>.alignment, MemoryLayout<pthread_cond_t>.alignment))
        mutex = raw.initializeMemory(as: pthread_mutex_t.self, repeating: pthread_mutex_t(), count: 1)
        pthread_mutex_init(mutex, nil)
        condition = (raw + conditionOffset).initializeMemory(as: pthread_cond_t.self, repeating: pthread_cond_t(), count: 1)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    /// Where the condition variable starts in the allocation, after the mutex.
    private static var conditionOffset: Int {
        let alignment = MemoryLayout<pthread_cond_t>.alignment
        return (MemoryLayout<pthread_mutex_t>.size + alignment - 1) / alignment * alignment
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        UnsafeMutableRawPointer(mutex).deallocate()
    }

    /// Runs `body` with the lock held.
    public func withLock<T, E: Error>(_ body: (inout Value) throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Runs `body` with the lock held and wakes every waiter afterwards.
    public func update<T, E: Error>(_ body: (inout Value) throws(E) -> T) throws(E) -> T {
        try update(body, waking: pthread_cond_broadcast)
    }

    /// Runs `body` with the lock held and wakes one waiter afterwards: for a
    /// queue whose waiters are interchangeable (idle workers), where waking
    /// them all for each item made every other one wake, contend for the
    /// lock and sleep again.
    public func updateWakingOne<T, E: Error>(_ body: (inout Value) throws(E) -> T) throws(E) -> T {
        try update(body, waking: pthread_cond_signal)
    }

    private func update<T, E: Error>(
        _ body: (inout Value) throws(E) -> T, waking wake: (UnsafeMutablePointer<pthread_cond_t>) -> Int32
    ) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer {
            _ = wake(condition)
            pthread_mutex_unlock(mutex)
        }
        return try body(&value)
    }

    /// Waits until `ready` holds (checked with the lock held), then runs
    /// `body` with the lock still held. With a `timeout` in seconds, returns
    /// nil if `ready` still fails when it expires.
    public func wait<T>(
        until ready: (Value) -> Bool, timeout: Double? = nil, then body: (inout Value) -> T
    ) -> T? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        let deadline = timeout.map { monotonicDeadline(after: $0) }
        while !ready(value) {
            if var deadline {
                if pthread_cond_timedwait(condition, mutex, &deadline) == ETIMEDOUT, !ready(value) { return nil }
            } else {
                pthread_cond_wait(condition, mutex)
            }
        }
        return body(&value)
    }
}

/// Seconds since an arbitrary fixed point, from CLOCK_MONOTONIC.
public func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

private func monotonicDeadline(after seconds: Double) -> timespec {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    let whole = Int(seconds)
    var nanoseconds = now.tv_nsec + Int((seconds - Double(whole)) * 1e9)
    var secondsPart = now.tv_sec + whole
    if nanoseconds >= 1_000_000_000 {
        secondsPart += 1
        nanoseconds -= 1_000_000_000
    }
    return timespec(tv_sec: secondsPart, tv_nsec: nanoseconds)
}

/// Like `startThread`, but reports failure instead of trapping: returns 0,
/// or pthread_create's error (EAGAIN when the process may not have more
/// threads). For servers, where a client must not be able to crash the
/// process by making it start threads. `stackSize` (bytes) replaces the
/// default of 8 MiB, which a process that locks its memory (mlockall)
/// keeps resident for every thread.
public func tryStartThread(stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) -> Int32 {
    final class Box: Sendable {
        let body: @Sendable () -> Void
        init(body: @escaping @Sendable () -> Void) {
            self.body = body
        }
    }
    let box = Unmanaged.passRetained(Box(body: body))
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    if let stackSize {
        let result = pthread_attr_setstacksize(&attributes, stackSize)
        if result != 0 {
            box.release()
            return result
        }
    }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    var thread = pthread_t()
    let result = pthread_create(&thread, &attributes, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        box.body()
        return nil
    }, box.toOpaque())
    if result != 0 { box.release() }
    return result
}
