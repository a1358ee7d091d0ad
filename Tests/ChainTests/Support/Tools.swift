import Foundation

/// Finds the external programs the chain tests drive. A missing program is
/// a failure, never a skip.
enum Tools {
    /// The Debian package that ships each program, for the failure message.
    private static let packages: [String: String] = [
        "qemu-img": "qemu-utils", "qemu-io": "qemu-utils",
        "nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin",
        "nbdfuse": "nbdfuse", "fusermount3": "fuse3", "fio": "fio",
        "mkfs.ext4": "e2fsprogs", "fsck.ext4": "e2fsprogs",
        "mount": "mount", "umount": "mount", "stdbuf": "coreutils", "nbdkit": "nbdkit",
    ]

    /// The absolute path of `name`, searched in PATH and the sbin folders.
    static func path(of name: String) throws -> String {
        let folders = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
            + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        for folder in folders where !folder.isEmpty {
            let candidate = folder + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw ChainError.missingTool(name: name, package: packages[name] ?? name)
    }

    /// The command that runs nbdsh (libnbd's Python shell). /usr/bin/nbdsh
    /// runs whatever `python3` PATH finds first, which may lack the `nbd`
    /// module (pyenv, venv), so the system Python is named explicitly.
    static func nbdsh() throws -> [String] {
        let python = "/usr/bin/python3"
        guard FileManager.default.isExecutableFile(atPath: python) else { throw ChainError.missingTool(name: python, package: "python3") }
        guard FileManager.default.fileExists(atPath: "/usr/bin/nbdsh") else { throw ChainError.missingTool(name: "nbdsh", package: "python3-libnbd") }
        return [python, "-m", "nbd"]
    }

    /// A program built by this package, found beside the test bundle
    /// (`.build/<triple>/debug/`).
    static func built(_ program: String) throws -> String {
        let bundle = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let path = URL(fileURLWithPath: bundle).deletingLastPathComponent().appendingPathComponent(program).path
        guard FileManager.default.isExecutableFile(atPath: path) else { throw ChainError.notBuilt(program: program, path: path) }
        return path
    }

    /// Root, /dev/fuse and loop devices, for nbdfuse plus a loop mount.
    /// Without them the test fails with the reason; it never skips.
    static func requireMountPrivileges() throws {
        guard getuid() == 0 else { throw ChainError.notRoot(why: "mount -o loop needs root") }
        guard FileManager.default.fileExists(atPath: "/dev/fuse") else {
            throw ChainError.missingDevice(path: "/dev/fuse", why: "nbdfuse needs FUSE (modprobe fuse, or pass /dev/fuse to the container)")
        }
        guard FileManager.default.fileExists(atPath: "/dev/loop-control") else {
            throw ChainError.missingDevice(path: "/dev/loop-control", why: "mount -o loop needs loop devices (modprobe loop)")
        }
    }
}
