/// The boot manifest (docs/toolstack.md, "Manifest"): what `bulkhead boot`
/// launches, what each domain is granted, which consumer may use which
/// export, where launches are measured and how crashed domains restart.
public struct BootManifest: Sendable, Equatable {
    /// The manifest read when no path is given.
    public static let defaultPath = "/etc/bulkhead/boot.toml"
    public static let defaultRuntimeDirectory = "/run/bulkhead"
    public static let defaultPCR = 15
    public static let defaultTCTI = "device:/dev/tpmrm0"
    /// `tpm_tcti = "none"`: launches are logged but extend no PCR.
    public static let noTPM = "none"

    /// Who a domain runs as: a uid, or a system user created at boot if absent.
    public enum User: Sendable, Equatable, CustomStringConvertible {
        case uid(UInt32)
        case name(String)

        public var description: String {
            switch self {
            case .uid(let uid): String(uid)
            case .name(let name): name
            }
        }
    }

    /// A disk or image file the storage domain owns and serves as an NBD export.
    public struct Disk: Sendable, Equatable {
        public var name: String
        public var path: String
        public var readOnly: Bool
    }

    /// How the crypt domain unlocks the pool.
    public enum Keyslot: Sendable, Equatable {
        case keyFile(String)
        case tpm2
        /// The recovery key in this file, typed at a recovery prompt when
        /// the TPM refused to unseal (`bulkhead boot --recovery-key-file`;
        /// never written in a manifest).
        case recoveryKeyFile(String)
    }

    public struct StorageDomain: Sendable, Equatable {
        public var executable: String
        public var arguments: [String]
        public var user: User
        public var disks: [Disk]
    }

    public struct CryptDomain: Sendable, Equatable {
        public var executable: String
        public var arguments: [String]
        public var user: User
        /// The storage domain's disk that holds the pool.
        public var pool: String
        public var keyslot: Keyslot
        public var stateDirectory: String
        public var retryWindowSeconds: Int
        /// Trust anchors cryptd checks freshness against (`--anchor`):
        /// "file" (its state directory) and/or "tpm2" (a TPM NV counter,
        /// which survives a state directory on tmpfs).
        public var anchors: [String] = ["file"]
    }

    /// A volume served to consumers, and the uids allowed to connect.
    public struct Export: Sendable, Equatable {
        public var volume: String
        public var consumers: [UInt32]
    }

    public struct RestartPolicy: Sendable, Equatable {
        /// The first delay before restarting a crashed domain; doubled per
        /// crash up to `maximumDelayMilliseconds`.
        public var initialDelayMilliseconds: Int = 200
        public var maximumDelayMilliseconds: Int = 10_000
        /// A domain up this long has its delay reset to the initial one.
        public var stableAfterSeconds: Int = 30
    }

    public var runtimeDirectory: String
    public var pcr: Int
    public var tcti: String
    /// Whether the domains run in bubblewrap sandboxes with seccomp.
    public var sandbox: Bool
    public var storage: StorageDomain
    public var crypt: CryptDomain
    public var exports: [Export]
    public var restart: RestartPolicy

    /// Whether launches extend a PCR.
    public var measuresIntoTPM: Bool { tcti != Self.noTPM }
}

/// A manifest that cannot be used: one line naming the file, the line and
/// the key. Nothing is started on such a manifest.
public struct ManifestError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var key: String
    public var message: String

    public var description: String { "\(file):\(line): \(key.isEmpty ? "" : "\(key): ")\(message)" }
}

extension BootManifest {
    /// Parses and checks manifest `text`; `file` names it in errors.
    public init(parsing text: String, file: String) throws(ManifestError) {
        let root: TOMLTable
        do { root = try parseTOML(text) } catch {
            throw ManifestError(file: file, line: error.line, key: "", message: error.message)
        }
        let reader = TableReader(table: root, path: "", file: file)
        try reader.allowOnly(["runtime_dir", "pcr", "tpm_tcti", "sandbox", "restart", "storage", "crypt", "exports"])
        runtimeDirectory = try reader.absolutePath("runtime_dir", default: Self.defaultRuntimeDirectory)
        pcr = try reader.integer("pcr", in: 0...23, default: Self.defaultPCR)
        tcti = try reader.string("tpm_tcti", default: Self.defaultTCTI)
        sandbox = try reader.boolean("sandbox", default: true)

        var restart = RestartPolicy()
        if let table = try reader.optionalTable("restart") {
            try table.allowOnly(["initial_delay_ms", "max_delay_ms", "stable_after_s"])
            restart.initialDelayMilliseconds = try table.integer("initial_delay_ms", in: 1...600_000, default: restart.initialDelayMilliseconds)
            restart.maximumDelayMilliseconds = try table.integer("max_delay_ms", in: 1...3_600_000, default: restart.maximumDelayMilliseconds)
            restart.stableAfterSeconds = try table.integer("stable_after_s", in: 1...86_400, default: restart.stableAfterSeconds)
        }
        self.restart = restart

        let storageTable = try reader.table("storage")
        try storageTable.allowOnly(["executable", "arguments", "user", "disks"])
        var disks: [Disk] = []
        for diskTable in try storageTable.tables("disks") {
            try diskTable.allowOnly(["name", "path", "read_only"])
            let name = try diskTable.name("name")
            guard !disks.contains(where: { $0.name == name }) else { throw diskTable.error("name", "duplicate disk name \"\(name)\"") }
            disks.append(Disk(name: name, path: try diskTable.absolutePath("path"), readOnly: try diskTable.boolean("read_only", default: false)))
        }
        guard !disks.isEmpty else { throw storageTable.error("disks", "missing: at least one [[storage.disks]] is required", line: storageTable.table.line) }
        storage = StorageDomain(
            executable: try storageTable.absolutePath("executable"), arguments: try storageTable.strings("arguments", default: []),
            user: try storageTable.user("user"), disks: disks)

        let cryptTable = try reader.table("crypt")
        try cryptTable.allowOnly(["executable", "arguments", "user", "pool", "keyslot", "key_file", "state_dir", "retry_window", "anchors"])
        let pool = try cryptTable.name("pool")
        guard disks.contains(where: { $0.name == pool }) else { throw cryptTable.error("pool", "no storage disk named \"\(pool)\"") }
        let keyslot: Keyslot
        switch try cryptTable.string("keyslot") {
        case "key-file": keyslot = .keyFile(try cryptTable.absolutePath("key_file"))
        case "tpm2":
            if cryptTable.table["key_file"] != nil { throw cryptTable.error("key_file", "not used with keyslot = \"tpm2\"") }
            // The crypt domain unseals through the same TPM the launch is measured into.
            guard tcti != "none" else { throw cryptTable.error("keyslot", "\"tpm2\" needs a TPM: tpm_tcti is \"none\"") }
            keyslot = .tpm2
        case let other: throw cryptTable.error("keyslot", "\"\(other)\" is not a keyslot policy (key-file or tpm2)")
        }
        crypt = CryptDomain(
            executable: try cryptTable.absolutePath("executable"), arguments: try cryptTable.strings("arguments", default: []),
            user: try cryptTable.user("user"), pool: pool, keyslot: keyslot,
            stateDirectory: try cryptTable.absolutePath("state_dir"),
            retryWindowSeconds: try cryptTable.integer("retry_window", in: 1...3600, default: 30),
            anchors: try cryptTable.strings("anchors", default: ["file"]))
        for anchor in crypt.anchors where !["file", "tpm2"].contains(anchor) {
            throw cryptTable.error("anchors", "\"\(anchor)\" is not a trust anchor (file or tpm2)")
        }
        guard !crypt.anchors.isEmpty, Set(crypt.anchors).count == crypt.anchors.count else {
            throw cryptTable.error("anchors", "name each anchor once, at least one")
        }
        if crypt.anchors.contains("tpm2") && tcti == "none" {
            throw cryptTable.error("anchors", "\"tpm2\" needs a TPM: tpm_tcti is \"none\"")
        }

        var exports: [Export] = []
        for exportTable in try reader.tables("exports") {
            try exportTable.allowOnly(["volume", "consumers"])
            let volume = try exportTable.name("volume")
            guard !exports.contains(where: { $0.volume == volume }) else { throw exportTable.error("volume", "volume \"\(volume)\" is exported twice") }
            let consumers = try exportTable.uids("consumers")
            guard !consumers.isEmpty else { throw exportTable.error("consumers", "at least one consumer uid is required") }
            exports.append(Export(volume: volume, consumers: consumers))
        }
        guard !exports.isEmpty else { throw reader.error("exports", "missing: at least one [[exports]] is required", line: max(root.line, 1)) }
        self.exports = exports
        if storage.user == crypt.user { throw cryptTable.error("user", "the crypt domain must not run as the storage domain's user") }
    }
}

/// Reads one table of the manifest, naming keys by their dotted path.
struct TableReader {
    var table: TOMLTable
    var path: String
    var file: String

    func qualified(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func error(_ key: String, _ message: String, line: Int? = nil) -> ManifestError {
        ManifestError(file: file, line: line ?? table[key]?.line ?? max(table.line, 1), key: qualified(key), message: message)
    }

    /// Refuses any key not in `known`.
    func allowOnly(_ known: Set<String>) throws(ManifestError) {
        for entry in table.entries where !known.contains(entry.key) {
            throw ManifestError(file: file, line: entry.line, key: qualified(entry.key), message: "unknown key")
        }
    }

    func required(_ key: String) throws(ManifestError) -> TOMLTable.Entry {
        guard let entry = table[key] else {
            throw ManifestError(file: file, line: max(table.line, 1), key: qualified(key), message: "missing")
        }
        return entry
    }

    func wrongType(_ key: String, _ expected: String, _ found: TOMLValue) -> ManifestError {
        error(key, "expected \(expected), found \(found.typeName)")
    }

    func string(_ key: String) throws(ManifestError) -> String {
        let entry = try required(key)
        guard case .string(let value) = entry.value else { throw wrongType(key, "a string", entry.value) }
        guard !value.isEmpty else { throw error(key, "must not be empty") }
        return value
    }

    func string(_ key: String, default fallback: String) throws(ManifestError) -> String {
        table[key] == nil ? fallback : try string(key)
    }

    func absolutePath(_ key: String) throws(ManifestError) -> String {
        let value = try string(key)
        guard value.hasPrefix("/") else { throw error(key, "\"\(value)\" is not an absolute path") }
        guard !value.split(separator: "/").contains(".."), !value.contains("\n") else { throw error(key, "\"\(value)\" must not contain \"..\"") }
        return value
    }

    func absolutePath(_ key: String, default fallback: String) throws(ManifestError) -> String {
        table[key] == nil ? fallback : try absolutePath(key)
    }

    /// A name used in file and export names: letters, digits, '-', '_', '.'.
    func name(_ key: String) throws(ManifestError) -> String {
        let value = try string(key)
        let allowed = value.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
        }
        guard allowed, value.utf8.count <= 64, value != ".", value != ".." else {
            throw error(key, "\"\(value)\" is not a name (letters, digits, '-', '_', '.'; at most 64)")
        }
        return value
    }

    func integer(_ key: String, in range: ClosedRange<Int>, default fallback: Int) throws(ManifestError) -> Int {
        guard let entry = table[key] else { return fallback }
        guard case .integer(let value) = entry.value else { throw wrongType(key, "an integer", entry.value) }
        guard let small = Int(exactly: value), range.contains(small) else {
            throw error(key, "\(value) is out of range (\(range.lowerBound)...\(range.upperBound))")
        }
        return small
    }

    func boolean(_ key: String, default fallback: Bool) throws(ManifestError) -> Bool {
        guard let entry = table[key] else { return fallback }
        guard case .boolean(let value) = entry.value else { throw wrongType(key, "a boolean", entry.value) }
        return value
    }

    func strings(_ key: String, default fallback: [String]) throws(ManifestError) -> [String] {
        guard let entry = table[key] else { return fallback }
        guard case .array(let values) = entry.value else { throw wrongType(key, "an array of strings", entry.value) }
        var strings: [String] = []
        for value in values {
            guard case .string(let text) = value else { throw wrongType(key, "an array of strings", value) }
            guard !text.contains("\n"), !text.contains("\0") else { throw error(key, "arguments must not contain newlines or NUL") }
            strings.append(text)
        }
        return strings
    }

    func uid(_ value: Int64) -> UInt32? { value >= 0 && value < Int64(UInt32.max) ? UInt32(value) : nil }

    func uids(_ key: String) throws(ManifestError) -> [UInt32] {
        let entry = try required(key)
        guard case .array(let values) = entry.value else { throw wrongType(key, "an array of uids", entry.value) }
        var uids: [UInt32] = []
        for value in values {
            guard case .integer(let number) = value else { throw wrongType(key, "an array of uids", value) }
            guard let uid = uid(number) else { throw error(key, "\(number) is not a uid") }
            if !uids.contains(uid) { uids.append(uid) }
        }
        return uids
    }

    /// A domain's user: a non-zero uid, or a system user name.
    func user(_ key: String) throws(ManifestError) -> BootManifest.User {
        let entry = try required(key)
        switch entry.value {
        case .integer(let number):
            guard let uid = uid(number), uid != 0 else { throw error(key, "\(number) is not an unprivileged uid") }
            return .uid(uid)
        case .string:
            let name = try self.name(key)
            guard name != "root" else { throw error(key, "a domain must not run as root") }
            return .name(name)
        default:
            throw wrongType(key, "a uid or a user name", entry.value)
        }
    }

    func table(_ key: String) throws(ManifestError) -> TableReader {
        let entry = try required(key)
        guard case .table(let child) = entry.value else { throw wrongType(key, "a table", entry.value) }
        return TableReader(table: child, path: qualified(key), file: file)
    }

    func optionalTable(_ key: String) throws(ManifestError) -> TableReader? {
        table[key] == nil ? nil : try table(key)
    }

    /// The elements of an array of tables ([[key]]), each named key[i].
    func tables(_ key: String) throws(ManifestError) -> [TableReader] {
        guard let entry = table[key] else { return [] }
        guard case .array(let values) = entry.value else { throw wrongType(key, "an array of tables ([[\(qualified(key))]])", entry.value) }
        var readers: [TableReader] = []
        for (index, value) in values.enumerated() {
            guard case .table(let child) = value else { throw wrongType(key, "an array of tables ([[\(qualified(key))]])", value) }
            readers.append(TableReader(table: child, path: "\(qualified(key))[\(index)]", file: file))
        }
        return readers
    }
}
