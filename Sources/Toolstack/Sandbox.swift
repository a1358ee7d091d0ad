#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LaunchMeasurement

/// How a domain is started (docs/toolstack.md, "Sandbox"): `bwrap`, run
/// as root without a user namespace (so peer credentials on the sockets
/// stay real uids), makes fresh mount, PID, IPC, network, UTS and cgroup
/// namespaces showing only the read-only system, the executable, the
/// libraries it loads and the manifest's grants, keeps only the capabilities
/// to change user, installs the seccomp filter read from descriptor
/// `seccompDescriptor`, reports the domain's pid on `infoDescriptor`, and
/// runs `setpriv` as PID 1 of the namespace, which drops to the domain's uid
/// and gid with no supplementary groups, no capabilities (bounding and
/// inheritable sets cleared) and no_new_privs, and executes the domain.
public struct SandboxCommand: Sendable {
    /// Where bwrap writes {"child-pid": N} in the child.
    public static let infoDescriptor: Int32 = 3
    /// Where bwrap reads the BPF program in the child.
    public static let seccompDescriptor: Int32 = 4

    public var executable: String
    public var argv: [String]

    /// The command starting `launch` as `identity`; without the sandbox
    /// (`sandbox = false`, development) it only drops privileges.
    public init(launch: DomainLaunch, identity: DomainIdentity, libraryDirectories: [String]) throws(ToolstackError) {
        let setpriv = try ProcessLaunch.findExecutable("setpriv")
        let drop = [
            setpriv, "--reuid=\(identity.uid)", "--regid=\(identity.gid)", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
        ]
        if launch.sandboxed {
            let bwrap = try ProcessLaunch.findExecutable("bwrap")
            executable = bwrap
            // argv[0] "@...": systemd's shutdown spares such processes
            // (root storage daemons); the domain dies with its bwrap.
            argv = ["@bulkhead-\(launch.role.rawValue)-sandbox"] + Self.bwrapOptions(launch: launch, libraryDirectories: libraryDirectories) + ["--"] + drop + launch.arguments
        } else {
            executable = setpriv
            argv = drop + launch.arguments
        }
    }

    static func bwrapOptions(launch: DomainLaunch, libraryDirectories: [String]) -> [String] {
        var options = [
            "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            "--new-session", "--as-pid-1", "--die-with-parent",
            "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP",
        ]
        options += ["--ro-bind", "/usr", "/usr"]
        for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: top) {
                options += ["--symlink", target, top]
            } else if FileManager.default.fileExists(atPath: top) {
                options += ["--ro-bind", top, top]
            }
        }
        for file in ["/etc/ld.so.cache", "/etc/localtime"] where FileManager.default.fileExists(atPath: file) {
            options += ["--ro-bind", file, file]
        }
        options += ["--proc", "/proc", "--dev", "/dev", "--perms", "01777", "--tmpfs", "/tmp"]
        var binds: [(option: String, path: String)] = libraryDirectories.filter { !$0.hasPrefix("/usr/") }.map { ("--ro-bind", $0) }
        binds.append(("--ro-bind", launch.executable))
        for grant in launch.grants {
            switch grant.access {
            case .readOnly: binds.append(("--ro-bind", grant.path))
            case .readWrite: binds.append(("--bind", grant.path))
            case .device:
                var info = stat()
                let isDevice = stat(grant.path, &info) == 0 && (info.st_mode & S_IFMT == S_IFBLK || info.st_mode & S_IFMT == S_IFCHR)
                binds.append((isDevice ? "--dev-bind" : "--bind", grant.path))
            }
        }
        // bwrap run as root makes missing mount points mode 0700, which the
        // domain's user could not traverse: the folders leading to each bind
        // are made first, world-searchable.
        var made: Set<String> = ["/", "/usr", "/proc", "/dev", "/tmp"]
        for (_, path) in binds {
            var ancestors: [String] = []
            var current = (path as NSString).deletingLastPathComponent
            while !made.contains(current), current != "/", !current.isEmpty {
                ancestors.insert(current, at: 0)
                current = (current as NSString).deletingLastPathComponent
            }
            for ancestor in ancestors where made.insert(ancestor).inserted && !ancestor.hasPrefix("/usr/") {
                options += ["--perms", "0755", "--dir", ancestor]
            }
        }
        for (option, path) in binds { options += [option, path, path] }
        options += [
            "--chdir", "/", "--info-fd", String(infoDescriptor), "--seccomp", String(seccompDescriptor),
        ]
        return options
    }

    /// The folders of the shared libraries this process has loaded: the
    /// domains are built with the same toolchain, so they load the same
    /// runtime (a static build needs none).
    public static func loadedLibraryDirectories() -> [String] {
        guard let maps = try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8) else { return [] }
        var folders: Set<String> = []
        for line in maps.split(separator: "\n") {
            guard let slash = line.firstIndex(of: "/") else { continue }
            let path = String(line[slash...])
            guard path.contains(".so") else { continue }
            folders.insert((path as NSString).deletingLastPathComponent)
        }
        return folders.sorted()
    }
}
