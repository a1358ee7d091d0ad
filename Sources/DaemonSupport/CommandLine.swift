import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

/// Exit status for malformed arguments (EX_USAGE).
public let usageExitCode: Int32 = 64
/// Exit status when something the arguments name cannot be used.
public let failureExitCode: Int32 = 1

/// Prints `program: message` as one line on standard error and returns the
/// exit to throw.
public func commandFailure(_ program: String, _ message: String, status: Int32 = failureExitCode) -> ExitCode {
    let line = "\(program): \(message.replacingOccurrences(of: "\n", with: " "))\n"
    _ = line.utf8CString.withUnsafeBufferPointer { write(STDERR_FILENO, $0.baseAddress, $0.count - 1) }
    return ExitCode(status)
}
