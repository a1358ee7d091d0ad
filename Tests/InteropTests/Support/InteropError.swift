/// Why the interop harness could not do what a test asked; each case says
/// what happened so a failing test names the cause.
enum InteropError: Error, CustomStringConvertible {
    case missingTool(name: String, package: String)
    case missingDevice(path: String, why: String)
    case notRoot(why: String)
    case storagedNotBuilt(path: String)
    case commandTimedOut(command: String, seconds: Double, output: String)
    case serverNotReady(command: String, socket: String, seconds: Double, log: String)
    case serverExited(command: String, status: Int32, log: String)
    case setupFailed(String)

    var description: String {
        switch self {
        case .missingTool(let name, let package):
            "required tool '\(name)' not found; install the Debian package '\(package)' (.ci/run installs it)"
        case .missingDevice(let path, let why):
            "\(path) is missing: \(why)"
        case .notRoot(let why):
            "this test must run as root: \(why)"
        case .storagedNotBuilt(let path):
            "bulkhead-storaged is not built at \(path); run `swift build` first (scripts/test does)"
        case .commandTimedOut(let command, let seconds, let output):
            "`\(command)` did not finish within \(seconds) s and was killed; output:\n\(output)"
        case .serverNotReady(let command, let socket, let seconds, let log):
            "`\(command)` did not accept connections on \(socket) within \(seconds) s; its log:\n\(log)"
        case .serverExited(let command, let status, let log):
            "`\(command)` exited with status \(status) before it was stopped; its log:\n\(log)"
        case .setupFailed(let what):
            what
        }
    }
}
