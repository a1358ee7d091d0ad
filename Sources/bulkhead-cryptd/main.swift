import DaemonSupport

// Termination signals are blocked before any thread exists, so every
// thread inherits the mask and only `sigwait` takes them.
blockTerminationSignals()
Cryptd.main()
