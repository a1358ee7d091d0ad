import Foundation

/// Finds the external programs the interop tests drive. A missing program is
/// a test failure (never a skip): CI installs all of them in `.ci/run`.
enum Tools {
    /// Debian package that ships each program, for the failure message.
    private static let packages: [String: String] = [
        "nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin",
        "qemu-img": "qemu-utils", "qemu-io": "qemu-utils",
        "fio": "fio", "nbdfuse": "nbdfuse", "fusermount3": "fuse3",
        "mkfs.ext4": "e2fsprogs", "e2fsck": "e2fsprogs",
        "mount": "mount", "umount": "mount",
    ]

    /// Absolute path of `name`, searched in PATH and the sbin folders
    /// (mkfs.ext4 and e2fsck live there and PATH may lack them).
    static func path(of name: String) throws -> String {
        let pathVariable = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let folders = pathVariable.split(separator: ":").map(String.init)
            + ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        for folder in folders where !folder.isEmpty {
            let candidate = folder + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw InteropError.missingTool(name: name, package: packages[name] ?? name)
    }

    /// Command prefix that runs nbdsh (libnbd's Python shell). It runs the
    /// system Python explicitly: a `python3` earlier in PATH (pyenv, venv)
    /// lacks the `nbd` module.
    static func nbdsh() throws -> [String] {
        let python = "/usr/bin/python3"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw InteropError.missingTool(name: python, package: "python3")
        }
        let probe = try run([python, "-c", "import nbd"], timeout: 60)
        guard probe.status == 0 else {
            throw InteropError.missingTool(name: "nbdsh (Python module nbd)", package: "python3-libnbd")
        }
        return [python, "-m", "nbd"]
    }
}
