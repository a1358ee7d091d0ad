#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Runs work a latency-critical thread should not do itself on a few
/// threads that live for the process, starting jobs in the order given. The storage
/// connection's reader thread hands it the completion of a large READ
/// (opening 1 MiB and sending it to the consumer): done there, it held
/// back every reply behind it, every volume's, while a core sat idle.
public final class HandOff: Sendable {
    private struct Queue {
        var jobs: [@Sendable () -> Void] = []
        var head = 0
        var threads = 0
        var idle = 0
    }

    /// The process-wide crew: as many threads as cores beyond the first, at
    /// most 3 (one where there is one core, so hand-offs still run).
    public static let shared = HandOff(threads: min(3, max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) - 1)))

    private let maximumThreads: Int
    private let queue = Guarded(Queue())

    public init(threads: Int) { maximumThreads = max(1, threads) }

    /// Queues `job`; a thread runs it soon after. `job` may block only
    /// briefly: jobs queued behind it wait.
    public func run(_ job: @escaping @Sendable () -> Void) {
        let startThread = queue.updateWakingOne { queue -> Bool in
            queue.jobs.append(job)
            guard queue.jobs.count - queue.head > queue.idle, queue.threads < maximumThreads else { return false }
            queue.threads += 1
            return true
        }
        guard startThread else { return }
        if tryStartThread({ self.loop() }) != 0 {
            let alone = queue.update { queue -> Bool in
                queue.threads -= 1
                return queue.threads == 0
            }
            // Without any thread the job would never run: run it here.
            if alone { drain() }
        }
    }

    private func loop() {
        while true {
            queue.withLock { $0.idle += 1 }
            let job = queue.wait(until: { $0.head < $0.jobs.count }) { queue -> @Sendable () -> Void in
                queue.idle -= 1
                return Self.take(&queue)
            }
            job?()
        }
    }

    private func drain() {
        while let job = queue.withLock({ $0.head < $0.jobs.count ? Self.take(&$0) : nil }) { job() }
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
