import Glibc
import Synchronization
import Testing
import Threads

/// The crews that take work off a thread that must not do it: a
/// connection's workers, and large READ completions off the storage reader.
@Suite struct HandOffTests {
    /// One thread runs jobs in the order they were handed off.
    @Test func oneThreadRunsJobsInOrder() {
        let crew = HandOff(threads: 1)
        let seen = Mutex<[Int]>([])
        for index in 0..<500 { crew.run { seen.withLock { $0.append(index) } } }
        #expect(waitFor { seen.withLock { $0.count } == 500 })
        #expect(seen.withLock { $0 } == Array(0..<500))
    }

    /// Jobs handed off from several threads at once, to several threads,
    /// each run exactly once; a job that blocks briefly holds up only the
    /// thread running it.
    @Test(arguments: [1, 3])
    func everyJobRunsOnceFromManyThreads(threads: Int) {
        let crew = HandOff(threads: threads)
        let callers = 6
        let perCaller = 300
        let runs = Mutex([Int](repeating: 0, count: callers * perCaller))
        for caller in 0..<callers {
            startThread {
                for index in 0..<perCaller {
                    let job = caller * perCaller + index
                    crew.run {
                        if job % 97 == 0 { usleep(200) }
                        runs.withLock { $0[job] += 1 }
                    }
                }
            }
        }
        #expect(waitFor { runs.withLock { $0.reduce(0, +) } == callers * perCaller })
        #expect(runs.withLock { $0 } == [Int](repeating: 1, count: callers * perCaller))
    }

    /// After `close` the threads leave once the queue is empty, and
    /// `waitUntilStopped` returns; a job queued later still runs.
    @Test func closedCrewStopsButStillRunsLaterJobs() {
        let crew = HandOff(threads: 2)
        let ran = Mutex(0)
        for _ in 0..<50 { crew.run { ran.withLock { $0 += 1 } } }
        crew.close()
        #expect(waitFor { ran.withLock { $0 } == 50 })
        crew.waitUntilStopped()
        crew.run { ran.withLock { $0 += 1 } }
        #expect(waitFor { ran.withLock { $0 } == 51 })
        crew.waitUntilStopped()
    }

    private func waitFor(_ done: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + .seconds(30)
        while !done() {
            guard ContinuousClock.now < deadline else { return false }
            usleep(1000)
        }
        return true
    }
}
