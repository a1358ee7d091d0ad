#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Runs work that must leave the thread that has it on a few threads
/// started as needed, starting jobs in the order given. The NBD server's
/// connection thread hands its connection's crew the requests that would
/// block it (FLUSH, TRIM, large WRITEs, a READ spliced from a file); the
/// storage connection's reader thread hands the process-wide crew the
/// completion of a large READ (opening 1 MiB and sending it to the
/// consumer), which done there held back every volume's replies.
public final class HandOff: Sendable {
    private struct Queue {
        var jobs: [@Sendable () -> Void] = []
        var head = 0
        var threads = 0
        var idle = 0
        /// Threads leave once the queue is empty (`close`).
        var closed = false

        var waiting: Int { jobs.count - head }
    }

    /// The process-wide crew: as many threads as cores beyond the first, at
    /// most 3 (one where there is one core, so hand-offs still run).
    public static let shared = HandOff(threads: min(3, max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) - 1)))

    private let maximumThreads: Int
    private let stackSize: Int?
    private let queue = Guarded(Queue())

    /// A crew of at most `threads` threads (at least one), each with
    /// `stackSize` bytes of stack if given.
    public init(threads: Int, stackSize: Int? = nil) {
        maximumThreads = max(1, threads)
        self.stackSize = stackSize
    }

    /// Queues `job`; a thread runs it soon after, one started if the idle
    /// ones are too few for the jobs waiting. `job` may block only as long
    /// as the jobs behind it may wait. Returns the errno of a thread that
    /// could not start (0 otherwise); with no thread at all, the jobs
    /// waiting then run here.
    @discardableResult
    public func run(_ job: @escaping @Sendable () -> Void) -> Int32 {
        // One idle thread is enough for one job. The only other waiter,
        // `waitUntilStopped`, waits after `close`, when no thread sleeps idle.
        let startThread = queue.updateWakingOne { queue -> Bool in
            queue.jobs.append(job)
            // More waiting than idle threads to take them: an idle count
            // alone would miss that a thread just started takes one job of
            // a burst, not all of it.
            guard queue.waiting > queue.idle, queue.threads < maximumThreads else { return false }
            queue.threads += 1
            return true
        }
        guard startThread else { return 0 }
        let error = tryStartThread(stackSize: stackSize) { self.loop() }
        guard error != 0 else { return 0 }
        let alone = queue.update { queue -> Bool in
            queue.threads -= 1
            return queue.threads == 0
        }
        // Without any thread the jobs would wait forever: run them here.
        if alone {
            while let job = queue.withLock({ $0.waiting > 0 ? Self.take(&$0) : nil }) { job() }
        }
        return error
    }

    /// Lets the threads leave once nothing is queued; jobs queued later
    /// still run, on threads started for them.
    public func close() {
        queue.update { $0.closed = true }
    }

    /// After `close`, waits until every thread has left.
    public func waitUntilStopped() {
        _ = queue.wait(until: { $0.threads == 0 }) { _ in () }
    }

    private func loop() {
        while true {
            // Idle threads are counted so that `run` starts one only when
            // none is free.
            queue.withLock { $0.idle += 1 }
            let job = queue.wait(until: { $0.waiting > 0 || $0.closed }) { queue -> (@Sendable () -> Void)? in
                queue.idle -= 1
                guard queue.waiting > 0 else {
                    queue.threads -= 1
                    return nil
                }
                return Self.take(&queue)
            }
            guard let job = job ?? nil else {
                // Wakes `waitUntilStopped`, waiting for the last to leave.
                queue.update { _ in }
                return
            }
            job()
        }
    }

    private static func take(_ queue: inout Queue) -> @Sendable () -> Void {
        let job = queue.jobs[queue.head]
        queue.head += 1
        if queue.head == queue.jobs.count {
            queue.jobs.removeAll(keepingCapacity: true)
            queue.head = 0
        }
        return job
    }
}
