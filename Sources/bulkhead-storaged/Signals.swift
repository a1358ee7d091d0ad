#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The signals that ask the daemon to shut down cleanly.
let terminationSignals: [Int32] = [SIGTERM, SIGINT]

private func terminationSignalSet() -> sigset_t {
    var set = sigset_t()
    sigemptyset(&set)
    for signal in terminationSignals { sigaddset(&set, signal) }
    return set
}

/// Blocks the termination signals in the calling thread, and so in every
/// thread it starts afterwards. A reply to a vanished peer is an error on
/// the socket, never SIGPIPE.
func blockTerminationSignals() {
    var set = terminationSignalSet()
    pthread_sigmask(SIG_BLOCK, &set, nil)
    signal(SIGPIPE, SIG_IGN)
}

/// Waits until a termination signal arrives and returns it.
func waitForTerminationSignal() -> Int32 {
    var set = terminationSignalSet()
    var received: Int32 = 0
    while sigwait(&set, &received) != 0 {}
    return received
}
