import Glibc
import Synchronization
import Testing
import Threads

/// The crew that shares out a large request's cipher work.
@Suite struct ParallelWorkTests {
    @Test(arguments: [0, 1, 15, 16, 17, 256, 1000])
    func everyIndexRunsExactlyOnce(count: Int) {
        let crew = ParallelWork(helpers: 3)
        let seen = Mutex([Int](repeating: 0, count: count))
        crew.run(count: count, grain: 16) { range in
            for index in range { seen.withLock { $0[index] += 1 } }
        }
        #expect(seen.withLock { $0 } == [Int](repeating: 1, count: count))
    }

    /// Several threads share one crew at once (the storage reader opening
    /// one read while connection threads seal writes), with loops short
    /// enough to run unsplit and long ones; each call returns only when its
    /// own pieces are done, each index having run exactly once.
    @Test(arguments: [1, 3])
    func concurrentCallersEachGetTheirWorkDone(helpers: Int) {
        let crew = ParallelWork(helpers: helpers)
        let callers = 8
        let rounds = 60
        let counts = [20, 256, 1000]
        let wrong = Mutex(0)
        let totals = Mutex([Int](repeating: 0, count: callers))
        let done = Mutex(0)
        for caller in 0..<callers {
            startThread {
                for round in 0..<rounds {
                    let count = counts[(caller + round) % counts.count]
                    let seen = Mutex([Int](repeating: 0, count: count))
                    crew.run(count: count, grain: 16) { range in
                        for index in range { seen.withLock { $0[index] += 1 } }
                    }
                    // Every piece has run by the time `run` returns.
                    if seen.withLock({ $0 }) != [Int](repeating: 1, count: count) { wrong.withLock { $0 += 1 } }
                    totals.withLock { $0[caller] += count }
                }
                done.withLock { $0 += 1 }
            }
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while done.withLock({ $0 }) < callers, ContinuousClock.now < deadline { usleepLike() }
        #expect(done.withLock { $0 } == callers)
        #expect(wrong.withLock { $0 } == 0)
        let expected = (0..<callers).map { caller in (0..<rounds).reduce(0) { $0 + counts[(caller + $1) % counts.count] } }
        #expect(totals.withLock { $0 } == expected)
    }

    /// A loop under two grains is one call on the calling thread, so the
    /// body may use the caller's unsynchronised local state there (as
    /// `Volume.open` keeps a sealer cache per piece); `body` does not
    /// escape, so such a call costs no allocation.
    @Test(arguments: [1, 16, 31])
    func shortLoopRunsOnceOnTheCallingThread(count: Int) {
        let crew = ParallelWork(helpers: 3)
        let caller = pthread_self()
        nonisolated(unsafe) var calls: [Range<Int>] = []
        nonisolated(unsafe) var onCaller = true
        crew.run(count: count, grain: 16) { range in
            calls.append(range)
            onCaller = onCaller && pthread_equal(pthread_self(), caller) != 0
        }
        #expect(calls == [0..<count])
        #expect(onCaller)
    }

    /// From two grains on, the loop is split into pieces of a grain or more.
    @Test func longLoopIsSplit() {
        let crew = ParallelWork(helpers: 3)
        let ranges = Mutex<[Range<Int>]>([])
        crew.run(count: 32, grain: 16) { range in ranges.withLock { $0.append(range) } }
        #expect(ranges.withLock { $0 }.sorted { $0.lowerBound < $1.lowerBound } == [0..<16, 16..<32])
    }

    @Test func noHelpersRunsOnTheCaller() {
        let crew = ParallelWork(helpers: 0)
        let ranges = Mutex<[Range<Int>]>([])
        crew.run(count: 100, grain: 1) { range in ranges.withLock { $0.append(range) } }
        #expect(ranges.withLock { $0 } == [0..<100])
    }
}

private func usleepLike() { usleep(5000) }
