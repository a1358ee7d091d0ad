import Foundation
import Synchronization

/// Waits until `condition` holds, polling; false if `timeout` seconds pass first.
public func eventually(timeout: Double, _ condition: () -> Bool) -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: .seconds(timeout))
    while clock.now < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// A value behind a mutex, shareable between threads.
public final class Locked<T: Sendable>: Sendable {
    private let mutex: Mutex<T>
    public init(_ value: T) { mutex = Mutex(value) }
    public func withLock<R>(_ body: (inout T) -> R) -> R { mutex.withLock { body(&$0) } }
    public var value: T { withLock { $0 } }
}
