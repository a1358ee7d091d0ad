import Foundation
import TestSupport

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

