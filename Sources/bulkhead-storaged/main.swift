import DaemonSupport
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// SIGTERM and SIGINT are blocked here, before any thread exists, so that
// every thread inherits the mask and the signals are only ever taken by
// `sigwait` once the server runs.
blockTerminationSignals()
Storaged.main()
