/// Why the chain harness could not do what a test asked. Each case says what
/// happened and carries the output that explains it.
enum ChainError: Error, CustomStringConvertible {
    case missingTool(name: String, package: String)
    case missingDevice(path: String, why: String)
    case notRoot(why: String)
    case notBuilt(program: String, path: String)
    case timedOut(command: String, seconds: Double, output: String)
    case notReady(command: String, socket: String, seconds: Double, log: String)
    case exitedEarly(command: String, status: Int32, log: String)
    case commandFailed(CommandResult)
    case setup(String)

    var description: String {
        switch self {
        case .missingTool(let name, let package):
            "required tool '\(name)' is missing: install the Debian package '\(package)'"
        case .missingDevice(let path, let why):
            "\(path) is missing: \(why)"
        case .notRoot(let why):
            "this test must run as root: \(why)"
        case .notBuilt(let program, let path):
            "\(program) is not built at \(path): run `swift build` before `swift test`"
        case .timedOut(let command, let seconds, let output):
            "`\(command)` did not finish within \(seconds) s and was killed; output:\n\(output)"
        case .notReady(let command, let socket, let seconds, let log):
            "`\(command)` did not accept connections on \(socket) within \(seconds) s; its log:\n\(log)"
        case .exitedEarly(let command, let status, let log):
            "`\(command)` exited with status \(status) when it should have kept running; its log:\n\(log)"
        case .commandFailed(let result):
            result.description
        case .setup(let what):
            what
        }
    }
}
