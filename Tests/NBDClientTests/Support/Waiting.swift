import Foundation
import Synchronization

/// Waits until `condition` holds, polling; false if `timeout` seconds pass first.
func eventually(timeout: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Runs `body` on `count` system threads at once and waits for all of them,
/// at most `timeout` seconds; false if any is still running then.
func runConcurrently(_ count: Int, timeout: Double, _ body: @escaping @Sendable (Int) -> Void) -> Bool {
    let group = DispatchGroup()
    for index in 0..<count {
        group.enter()
        Thread.detachNewThread {
            body(index)
            group.leave()
        }
    }
    return group.wait(timeout: .now() + timeout) == .success
}

/// Runs `body` on a system thread; `wait` returns its result, or nil
/// if it has not finished within the timeout.
final class Background<T: Sendable>: Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let box = Locked<T?>(nil)

    init(_ body: @escaping @Sendable () -> T) {
        Thread.detachNewThread { [done, box] in
            let value = body()
            box.withLock { $0 = value }
            done.signal()
        }
    }

    func wait(timeout: Double) -> T? {
        guard done.wait(timeout: .now() + timeout) == .success else { return nil }
        return box.withLock { $0 }
    }
}

/// A value behind a mutex, shareable between threads.
final class Locked<T: Sendable>: Sendable {
    private let mutex: Mutex<T>
    init(_ value: T) { mutex = Mutex(value) }
    func withLock<R>(_ body: (inout T) -> R) -> R { mutex.withLock { body(&$0) } }
    var value: T { withLock { $0 } }
}
