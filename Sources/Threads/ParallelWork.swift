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
    /// One loop being shared out.
    private final class Job: @unchecked Sendable {
        // SAFETY: `next` and `unfinished` are only touched under `ParallelWork.state`'s lock.
        let pieces: [Range<Int>]
        let body: @Sendable (Range<Int>) -> Void
        var next = 0
        var unfinished: Int

        init(pieces: [Range<Int>], body: @escaping @Sendable (Range<Int>) -> Void) {
            self.pieces = pieces
            self.body = body
            unfinished = pieces.count
        }
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
    /// `body` must not block on anything but CPU work.
    public func run(count: Int, grain: Int, _ body: @escaping @Sendable (Range<Int>) -> Void) {
        guard count > 0 else { return }
        let pieceCount = min(count / max(grain, 1), 4 * (maximumHelpers + 1))
        guard maximumHelpers > 0, pieceCount > 1 else { return body(0..<count) }
        let size = (count + pieceCount - 1) / pieceCount
        let pieces = stride(from: 0, to: count, by: size).map { $0..<min($0 + size, count) }
        let job = Job(pieces: pieces, body: body)
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
        _ = state.wait(until: { _ in job.unfinished == 0 }) { _ in () }
    }

    /// The next unclaimed piece of `job`, or nil when every piece is claimed.
    private func claim(from job: Job) -> Range<Int>? {
        state.withLock { state in Self.take(from: job, in: &state) }
    }

    /// Claims `job`'s next piece; a job leaves the list with its last piece,
    /// so every listed job has one to give.
    private static func take(from job: Job, in state: inout State) -> Range<Int>? {
        guard job.next < job.pieces.count else { return nil }
        let piece = job.pieces[job.next]
        job.next += 1
        if job.next == job.pieces.count { state.jobs.removeAll { $0 === job } }
        return piece
    }

    private func finish(_ job: Job, after piece: Range<Int>) {
        job.body(piece)
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
