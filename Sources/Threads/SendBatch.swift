#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Lets one thread gather the small sends of a burst of work into one
/// system call per socket: inside `SendBatch.run`, a sender enlists a flush
/// instead of writing at once, and the flushes run when the outermost `run`
/// returns. The NBD server's connection thread runs each chunk of decoded
/// requests in a batch (their storage requests leave together), and the
/// storage connection's reader runs the completions of each chunk of
/// replies in one (their consumer replies leave together).
///
/// The thread must not wait, inside a batch, for anything a deferred send
/// leads to: the flushes run only at its end.
public enum SendBatch {
    // SAFETY: a scope is only touched by the thread that created it, through
    // its thread-specific slot, and lives until its `run` returns.
    private final class Scope {
        var flushes: [(ObjectIdentifier, () -> Void)] = []
    }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, nil) == 0, "out of thread-specific keys")
        return key
    }()

    /// Runs `body` as a batch; nested calls join the outer batch.
    public static func run<T>(_ body: () throws -> T) rethrows -> T {
        guard pthread_getspecific(key) == nil else { return try body() }
        let scope = Scope()
        pthread_setspecific(key, Unmanaged.passUnretained(scope).toOpaque())
        defer {
            pthread_setspecific(key, nil)
            // Sends made by the flushes themselves go out directly.
            for (_, flush) in scope.flushes { flush() }
        }
        return try body()
    }

    /// Whether the calling thread is inside a batch.
    public static var isActive: Bool { pthread_getspecific(key) != nil }

    /// Arranges for `flush` to run when the calling thread's batch ends,
    /// once per `owner` however often it enlists; false, and nothing
    /// arranged, when the thread is not in a batch.
    public static func enlist(_ owner: AnyObject, flush: @escaping () -> Void) -> Bool {
        guard let raw = pthread_getspecific(key) else { return false }
        let scope = Unmanaged<Scope>.fromOpaque(raw).takeUnretainedValue()
        let id = ObjectIdentifier(owner)
        if !scope.flushes.contains(where: { $0.0 == id }) { scope.flushes.append((id, flush)) }
        return true
    }
}
