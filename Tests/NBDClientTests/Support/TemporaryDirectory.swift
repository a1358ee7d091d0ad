import Foundation

/// A private directory under /tmp, removed on deinit. Short, so Unix socket
/// paths inside it stay well below the 107-byte limit.
final class TemporaryDirectory: Sendable {
    let path: String

    init() throws {
        var template = Array("/tmp/nbdc-XXXXXX".utf8CString)
        guard let result = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw POSIXError(.init(rawValue: errno) ?? .EIO)
        }
        path = String(cString: result)
    }

    func file(_ name: String) -> String { path + "/" + name }

    /// Removes the directory and everything in it now.
    func remove() { try? FileManager.default.removeItem(atPath: path) }

    deinit { remove() }
}
