import Foundation
import Testing

/// A private folder under /tmp with a short path, so the Unix socket paths
/// inside it stay far below the 108-byte `sun_path` limit.
final class Scratch {
    let path: String

    init() throws {
        var template = Array("/tmp/bhc-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {
            throw ChainError.setup("mkdtemp /tmp/bhc-XXXXXX: \(String(cString: strerror(errno)))")
        }
        path = String(cString: made)
    }

    func file(_ name: String) -> String { path + "/" + name }

    /// Makes the folder `name` inside the scratch folder and returns its path.
    func folder(_ name: String) throws -> String {
        let folder = file(name)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        return folder
    }

    /// Mount points at or below the scratch folder.
    var mounts: [String] {
        readText("/proc/self/mountinfo").split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { return nil }
            let point = String(fields[4])
            return point == path || point.hasPrefix(path + "/") ? point : nil
        }
    }

    /// Deletes the folder, unless something is still mounted inside it (a
    /// recursive delete must never walk into a live mount); that is recorded
    /// as an issue.
    func remove() {
        if let busy = mounts.first {
            Issue.record("left \(path) in place: \(busy) is still mounted")
            return
        }
        try? FileManager.default.removeItem(atPath: path)
    }
}
