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
    /// A sender whose held sends go out at the end of a batch.
    public protocol Sender: AnyObject {
        /// Sends what the sender held back during the batch.
        func flushBatch()
    }

    // SAFETY: a scope is only touched by the thread that created it, through
    // its thread-specific slot, and lives until its `run` returns.
    private final class Scope {
        @exclusivity(unchecked) var senders: [any Sender] = []
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
            for sender in scope.senders { sender.flushBatch() }
        }
        return try body()
    }

    /// Whether the calling thread is inside a batch.
    public static var isActive: Bool { pthread_getspecific(key) != nil }

    /// Arranges for `sender.flushBatch()` to run when the calling thread's
    /// batch ends, once however often it enlists; false, and nothing
    /// arranged, when the thread is not in a batch. (A sender, not a
    /// closure: a closure would be allocated on every small send.)
    public static func enlist(_ sender: some Sender) -> Bool {
        guard let raw = pthread_getspecific(key) else { return false }
        let scope = Unmanaged<Scope>.fromOpaque(raw).takeUnretainedValue()
        if !scope.senders.contains(where: { $0 === sender }) { scope.senders.append(sender) }
        return true
    }
}
