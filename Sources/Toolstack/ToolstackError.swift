/// Why a toolstack operation failed, in one line.
public struct ToolstackError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

#if canImport(Glibc)
import Glibc
#endif

/// strerror of `code`.
func systemMessage(_ code: Int32) -> String { String(cString: strerror(code)) }

/// A pipe whose both ends are close-on-exec (children get an end only by
/// an explicit dup2): [read, write].
func closeOnExecPipe() throws(ToolstackError) -> [Int32] {
    var ends: [Int32] = [0, 0]
    guard pipe(&ends) == 0 else { throw ToolstackError("pipe: \(systemMessage(errno))") }
    for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
    return ends
}
