import Foundation

/// Why a scratch folder could not be made.
public struct ScratchError: Error, CustomStringConvertible {
    public let description: String
}

/// A private folder under /tmp with a short path, so Unix socket paths
/// inside it stay far below the 108-byte `sun_path` limit. Shared by the
/// test targets that run real processes.
public final class ScratchFolder: Sendable {
    public let path: String

    public init(prefix: String = "/tmp/bh-") throws {
        var template = Array("\(prefix)XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {
            throw ScratchError(description: "mkdtemp \(prefix)XXXXXX: \(String(cString: strerror(errno)))")
        }
        path = String(cString: made)
    }

    public func file(_ name: String) -> String { path + "/" + name }

    /// Makes the folder `name` inside the scratch folder and returns its path.
    public func folder(_ name: String) throws -> String {
        let folder = file(name)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        return folder
    }

    /// Mount points at or below the scratch folder.
    public var mounts: [String] {
        let table = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return table.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { return nil }
            let point = String(fields[4])
            return point == path || point.hasPrefix(path + "/") ? point : nil
        }
    }

    /// Deletes the folder unless something is still mounted inside it (a
    /// recursive delete must never walk into a live mount): then returns
    /// that mount point and leaves the folder in place.
    public func removeUnlessMounted() -> String? {
        if let busy = mounts.first { return busy }
        try? FileManager.default.removeItem(atPath: path)
        return nil
    }
}
