import Foundation
import Testing

/// A private temporary folder under /tmp with a short path, so Unix socket
/// paths inside it stay well under the 107-byte `sun_path` limit.
final class Scratch {
    let path: String

    init() throws {
        var template = Array("/tmp/bh-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {
            throw InteropError.setupFailed("mkdtemp /tmp/bh-XXXXXX: \(String(cString: strerror(errno)))")
        }
        path = String(cString: made)
    }

    func file(_ name: String) -> String { path + "/" + name }

    /// Makes a folder `name` inside the scratch folder and returns its path.
    func folder(_ name: String) throws -> String {
        let folder = file(name)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        return folder
    }

    /// Deletes the folder, unless something is still mounted inside it:
    /// a recursive delete must never walk into a live mount.
    func remove() {
        let mounts = readText("/proc/self/mountinfo").split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            return fields.count > 4 ? String(fields[4]) : nil
        }
        if let busy = mounts.first(where: { $0 == path || $0.hasPrefix(path + "/") }) {
            Issue.record("left \(path) in place: \(busy) is still mounted")
            return
        }
        try? FileManager.default.removeItem(atPath: path)
    }
}
