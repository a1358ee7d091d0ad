#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Spreads a loop of independent CPU work (sealing or opening the blocks of
/// one large request) over the calling thread and a few helper threads, so
/// a 1 MiB request's cipher work does not run on one core while the other
/// idles. The caller always takes part and takes whatever no helper has
/// claimed, so it never waits for a helper to become free: only for
/// pieces a helper is already running, which need nothing but CPU.
public final class ParallelWork: Sendable {
    /// One loop being shared out, in `pieceCount` pieces of `size` indexes
    /// (the last perhaps shorter).
    private final class Job: @unchecked Sendable {
        // SAFETY: `next`, `unfinished` and clearing `body` happen only under
        // `ParallelWork.state`'s lock; `body` is read by a thread only
        // between claiming a piece and counting it finished, so before the
        // caller clears it.
        let count: Int
        let size: Int
        let pieceCount: Int
        var body: (@Sendable (Range<Int>) -> Void)?
        var next = 0
        var unfinished: Int

        init(count: Int, pieceCount: Int, body: @escaping @Sendable (Range<Int>) -> Void) {
            self.count = count
            self.size = (count + pieceCount - 1) / pieceCount
            self.pieceCount = (count + size - 1) / size
            self.body = body
            unfinished = self.pieceCount
        }

        func piece(_ index: Int) -> Range<Int> { (index * size)..<min((index + 1) * size, count) }
    }

    private struct State {
        var jobs: [Job] = []
        var helpers = 0
    }

    /// The process-wide crew: one helper per core beyond the first, at most
    /// 7; BULKHEAD_PARALLEL_HELPERS sets the number (0: none), for
    /// measuring and for hosts that pin the domain to one core.
    public static let shared: ParallelWork = {
        if let text = getenv("BULKHEAD_PARALLEL_HELPERS"), let helpers = Int(String(cString: text)), (0...64).contains(helpers) {
            return ParallelWork(helpers: helpers)
        }
        return ParallelWork(helpers: min(7, max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) - 1)))
    }()

    private let maximumHelpers: Int
    private let state = Guarded(State())

    public init(helpers: Int) { maximumHelpers = max(0, helpers) }

    /// Runs `body` over `0..<count` in pieces of at least `grain`, on this
    /// thread and idle helpers, and returns when every piece has run.
    /// `body` must not block on anything but CPU work. A loop too short to
    /// split (under two grains) is one call of `body` on this thread, at no
    /// cost beyond it: `body` does not escape, so it needs no allocation.
    public func run(count: Int, grain: Int, _ body: @Sendable (Range<Int>) -> Void) {
        guard count > 0 else { return }
        let pieceCount = min(count / max(grain, 1), 4 * (maximumHelpers + 1))
        guard maximumHelpers > 0, pieceCount > 1 else { return body(0..<count) }
        // SAFETY: helpers keep `shared` only inside the job, which `share`
        // lets go of before it returns: it waits until every piece has run,
        // and each thread reads `body` before counting its piece finished.
        // So `body` never outlives this call (withoutActuallyEscaping traps
        // if it did).
        withoutActuallyEscaping(body) { shared in share(Job(count: count, pieceCount: pieceCount, body: shared)) }
    }

    /// Lists `job` for the helpers, starting one if none is idle, runs the
    /// pieces nobody has claimed, then waits for the pieces helpers are still
    /// running and clears the job's body.
    private func share(_ job: Job) {
        let startHelper = state.update { state -> Bool in
            state.jobs.append(job)
            guard state.helpers < maximumHelpers else { return false }
            state.helpers += 1
            return true
        }
        if startHelper, tryStartThread({ self.helperLoop() }) != 0 {
            state.update { $0.helpers -= 1 }
        }
        while let piece = claim(from: job) { finish(job, after: piece) }
        _ = state.wait(until: { _ in job.unfinished == 0 }) { _ in job.body = nil }
    }

    /// The next unclaimed piece of `job`, or nil when every piece is claimed.
    private func claim(from job: Job) -> Range<Int>? {
        state.withLock { state in Self.take(from: job, in: &state) }
    }

    /// Claims `job`'s next piece; a job leaves the list with its last piece,
    /// so every listed job has one to give.
    private static func take(from job: Job, in state: inout State) -> Range<Int>? {
        guard job.next < job.pieceCount else { return nil }
        let piece = job.piece(job.next)
        job.next += 1
        if job.next == job.pieceCount { state.jobs.removeAll { $0 === job } }
        return piece
    }

    private func finish(_ job: Job, after piece: Range<Int>) {
        job.body!(piece)
        state.update { _ in job.unfinished -= 1 }
    }

    private func helperLoop() {
        while true {
            // Helpers live for the process, sleeping when there is nothing to share.
            let claimed = state.wait(until: { !$0.jobs.isEmpty }) { state -> (Job, Range<Int>?) in
                let job = state.jobs[0]
                return (job, Self.take(from: job, in: &state))
            }
            if let (job, piece) = claimed, let piece { finish(job, after: piece) }
        }
    }
}
