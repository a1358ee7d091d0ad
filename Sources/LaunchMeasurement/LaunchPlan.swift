/// The two domains `bulkhead boot` launches, storage first.
public enum DomainRole: String, Sendable, CaseIterable, Codable {
    case storage
    case crypt
}

/// What one domain is started with, derived from the manifest alone
/// (docs/toolstack.md, "Launch plan"): its command line, its user and the
/// paths its sandbox grants. Everything here is measured.
public struct DomainLaunch: Sendable, Equatable {
    /// A path made visible in the sandbox, at the same place.
    public struct Grant: Sendable, Equatable {
        public enum Access: String, Sendable {
            /// Read-only bind mount.
            case readOnly = "ro"
            /// Read-write bind mount.
            case readWrite = "rw"
            /// A device node bind mount (disks, the TPM).
            case device = "dev"
        }
        public var access: Access
        public var path: String
    }

    public var role: DomainRole
    public var executable: String
    /// The full argv, the executable first.
    public var arguments: [String]
    public var user: BootManifest.User
    public var sandboxed: Bool
    public var grants: [Grant]
}

/// The runtime directory's layout.
public struct RuntimeLayout: Sendable, Equatable {
    public var root: String

    public init(root: String) { self.root = root }

    /// The storage domain's socket folder, granted to both domains.
    public var storageSocketDirectory: String { "\(root)/storage" }
    public var storageSocket: String { "\(storageSocketDirectory)/storage.sock" }
    /// The crypt domain's serve folder: one socket per exported volume.
    public var volumeDirectory: String { "\(root)/volumes" }
    public func volumeSocket(_ volume: String) -> String { "\(volumeDirectory)/\(volume).sock" }
    public var eventLog: String { "\(root)/eventlog.jsonl" }
    public var status: String { "\(root)/status.json" }
    public var supervisorPID: String { "\(root)/supervisor.pid" }
    public var logDirectory: String { "\(root)/log" }
    public func log(_ name: String) -> String { "\(logDirectory)/\(name).log" }
}

extension BootManifest {
    public var layout: RuntimeLayout { RuntimeLayout(root: runtimeDirectory) }

    /// The launch of `role` as this manifest defines it.
    public func launch(_ role: DomainRole) -> DomainLaunch {
        let layout = self.layout
        switch role {
        case .storage:
            var argv = [storage.executable, "--listen", "unix:\(layout.storageSocket)"]
            for disk in storage.disks { argv += ["--export", "\(disk.name)=\(disk.path)\(disk.readOnly ? ":ro" : "")"] }
            argv += storage.arguments
            let grants =
                [DomainLaunch.Grant(access: .readWrite, path: layout.storageSocketDirectory)]
                + storage.disks.map { DomainLaunch.Grant(access: $0.readOnly ? .readOnly : .device, path: $0.path) }
            return DomainLaunch(
                role: .storage, executable: storage.executable, arguments: argv, user: storage.user, sandboxed: sandbox, grants: grants)
        case .crypt:
            var argv = [
                crypt.executable, "--storage", "nbd:unix:\(layout.storageSocket)#\(crypt.pool)",
                "--state-dir", crypt.stateDirectory, "--serve-dir", layout.volumeDirectory,
                "--retry-window", String(crypt.retryWindowSeconds),
            ]
            for anchor in crypt.anchors { argv += ["--anchor", anchor] }
            for export in exports { argv += ["--volume", export.volume] }
            // Each export only to its own consumers.
            for export in exports {
                for uid in Set(export.consumers).sorted() { argv += ["--allow", "\(export.volume)=\(uid)"] }
            }
            var grants = [
                DomainLaunch.Grant(access: .readWrite, path: layout.storageSocketDirectory),
                DomainLaunch.Grant(access: .readWrite, path: layout.volumeDirectory),
                DomainLaunch.Grant(access: .readWrite, path: crypt.stateDirectory),
            ]
            switch crypt.keyslot {
            case .keyFile(let path):
                argv += ["--key-file", path]
                grants.append(DomainLaunch.Grant(access: .readOnly, path: path))
            case .recoveryKeyFile(let path):
                argv += ["--recovery-key-file", path]
                grants.append(DomainLaunch.Grant(access: .readOnly, path: path))
            case .tpm2:
                argv += ["--tpm2"]
            }
            if cryptUsesTPM {
                argv += ["--tpm2-device", tcti]
                if let device = tpmDevice { grants.append(DomainLaunch.Grant(access: .device, path: device)) }
            }
            argv += crypt.arguments
            return DomainLaunch(
                role: .crypt, executable: crypt.executable, arguments: argv, user: crypt.user, sandboxed: sandbox, grants: grants)
        }
    }

    /// This manifest with the crypt domain unlocking with the recovery key in
    /// `file` instead of its keyslot: the recovery path when the TPM does not
    /// unseal (a changed launch, docs/boot.md, "Recovery").
    public func unlockingWithRecoveryKey(file: String) -> BootManifest {
        var manifest = self
        manifest.crypt.keyslot = .recoveryKeyFile(file)
        return manifest
    }

    /// Whether the crypt domain talks to the TPM: a tpm2 keyslot or the
    /// TPM counter anchor.
    public var cryptUsesTPM: Bool { crypt.keyslot == .tpm2 || crypt.anchors.contains("tpm2") }

    /// The TPM device node named by a `device:` TCTI, if any.
    public var tpmDevice: String? {
        guard tcti.hasPrefix("device:") else { return tcti == "device" ? "/dev/tpmrm0" : nil }
        let path = String(tcti.dropFirst("device:".count))
        return path.isEmpty ? "/dev/tpmrm0" : path
    }
}
