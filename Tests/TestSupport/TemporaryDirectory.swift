import Foundation

/// A private directory under /tmp, removed with everything in it on deinit
/// (or `remove()`). Its path is short, so Unix socket paths inside it stay
/// far below the 108-byte `sun_path` limit.
public final class TemporaryDirectory: Sendable {
    public let path: String

    /// Makes `root`/`label`-XXXXXX (/dev/shm for a memory file system).
    public init(_ label: String = "bh", under root: String = "/tmp") throws {
        var template = Array("\(root)/\(label)-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        path = String(cString: made)
    }

    public func file(_ name: String) -> String { path + "/" + name }

    /// Removes the directory and everything in it now.
    public func remove() { try? FileManager.default.removeItem(atPath: path) }

    deinit { remove() }
}
