import Foundation
import LaunchMeasurement
import Testing
import Toolstack

/// The boot manifest: the example parses; unknown keys, missing fields and
/// wrong types are one-line errors naming file, line and key; nothing is
/// started on a bad manifest.
@Suite("Boot manifest") struct ManifestTests {
    static let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("examples/boot.toml").path

    static let minimal = """
        [storage]
        executable = "/usr/bin/bulkhead-storaged"
        user = 900

        [[storage.disks]]
        name = "pool"
        path = "/dev/vdb"

        [crypt]
        executable = "/usr/bin/bulkhead-cryptd"
        user = 901
        pool = "pool"
        keyslot = "key-file"
        key_file = "/etc/bulkhead/pool.key"
        state_dir = "/var/lib/bulkhead/crypt"

        [[exports]]
        volume = "root"
        consumers = [0]
        """

    @Test("the example manifest parses, with the documented defaults")
    func example() throws {
        let manifest = try ManifestFile.load(Self.example)
        #expect(manifest.pcr == 15)
        #expect(manifest.runtimeDirectory == "/run/bulkhead")
        #expect(manifest.tcti == "device:/dev/tpmrm0")
        #expect(manifest.storage.user == .name("bulkhead-storage"))
        #expect(manifest.storage.disks.map(\.name) == ["pool"])
        #expect(manifest.storage.disks.map(\.path) == ["/dev/disk/by-partlabel/bulkhead-pool"])
        #expect(manifest.storage.disks.map(\.readOnly) == [false])
        #expect(manifest.crypt.keyslot == .keyFile("/etc/bulkhead/pool.key"))
        #expect(manifest.exports.map(\.volume) == ["root", "vm-work"])
        #expect(manifest.exports[1].consumers == [0, 1000])
        #expect(manifest.restart.initialDelayMilliseconds == 200)

        let minimal = try BootManifest(parsing: Self.minimal, file: "m.toml")
        #expect(minimal.pcr == 15 && minimal.sandbox && minimal.crypt.retryWindowSeconds == 30)
    }

    @Test("the recovery path launches the crypt domain with --recovery-key-file instead of the TPM, and grants only that file")
    func recoveryKeyLaunch() throws {
        let tpm2 = Self.minimal.replacingOccurrences(of: "keyslot = \"key-file\"\nkey_file = \"/etc/bulkhead/pool.key\"", with: "keyslot = \"tpm2\"")
        let manifest = try BootManifest(parsing: tpm2, file: "m.toml")
        #expect(manifest.crypt.keyslot == .tpm2)
        #expect(manifest.launch(.crypt).arguments.suffix(3) == ["--tpm2", "--tpm2-device", "device:/dev/tpmrm0"])

        let recovery = manifest.unlockingWithRecoveryKey(file: "/run/bulkhead-recovery/key").launch(.crypt)
        #expect(recovery.arguments.suffix(2) == ["--recovery-key-file", "/run/bulkhead-recovery/key"])
        #expect(!recovery.arguments.contains("--tpm2"))
        #expect(recovery.grants.contains { $0.access == .readOnly && $0.path == "/run/bulkhead-recovery/key" })
        #expect(!recovery.grants.contains { $0.path == "/dev/tpmrm0" })
        // The storage domain's launch, and so its measurement, is unchanged.
        #expect(manifest.unlockingWithRecoveryKey(file: "/k").launch(.storage) == manifest.launch(.storage))
    }

    @Test("[crypt] anchors: file by default; tpm2 passes the TPM to the crypt domain even with a key file; bad values are one-line errors")
    func trustAnchors() throws {
        let minimal = try BootManifest(parsing: Self.minimal, file: "m.toml")
        #expect(minimal.crypt.anchors == ["file"])
        #expect(minimal.launch(.crypt).arguments.contains("file"))
        #expect(!minimal.launch(.crypt).grants.contains { $0.path == "/dev/tpmrm0" })

        let both = Self.minimal.replacingOccurrences(of: "user = 901", with: "user = 901\nanchors = [\"file\", \"tpm2\"]")
        let launch = try BootManifest(parsing: both, file: "m.toml").launch(.crypt)
        let arguments = launch.arguments.joined(separator: " ")
        #expect(arguments.contains("--anchor file --anchor tpm2"), "\(arguments)")
        #expect(arguments.contains("--tpm2-device device:/dev/tpmrm0") && !launch.arguments.contains("--tpm2"), "\(arguments)")
        #expect(launch.grants.contains { $0.access == .device && $0.path == "/dev/tpmrm0" })

        let unknown = Self.minimal.replacingOccurrences(of: "user = 901", with: "user = 901\nanchors = [\"cloud\"]")
        #expect(error(unknown) == "/etc/bulkhead/boot.toml:12: crypt.anchors: \"cloud\" is not a trust anchor (file or tpm2)")
        #expect(error("tpm_tcti = \"none\"\n" + both)?.hasSuffix("crypt.anchors: \"tpm2\" needs a TPM: tpm_tcti is \"none\"") == true)
    }

    /// The error for `text`, which must not parse.
    func error(_ text: String) -> String? {
        do {
            _ = try BootManifest(parsing: text, file: "/etc/bulkhead/boot.toml")
            return nil
        } catch {
            return error.description
        }
    }

    @Test("an unknown key is an error naming file, line and key")
    func unknownKey() {
        let text = Self.minimal.replacingOccurrences(of: "user = 901", with: "user = 901\nretries = 3")
        #expect(error(text) == "/etc/bulkhead/boot.toml:12: crypt.retries: unknown key")
        #expect(error("colour = \"blue\"\n" + Self.minimal) == "/etc/bulkhead/boot.toml:1: colour: unknown key")
        let disk = Self.minimal.replacingOccurrences(of: "path = \"/dev/vdb\"", with: "path = \"/dev/vdb\"\nsize = 4")
        #expect(error(disk) == "/etc/bulkhead/boot.toml:8: storage.disks[0].size: unknown key")
    }

    @Test("a missing field is an error naming file, line and key")
    func missingField() {
        let text = Self.minimal.replacingOccurrences(of: "state_dir = \"/var/lib/bulkhead/crypt\"\n", with: "")
        #expect(error(text) == "/etc/bulkhead/boot.toml:9: crypt.state_dir: missing")
        let noStorage = Self.minimal.replacingOccurrences(of: "executable = \"/usr/bin/bulkhead-storaged\"\n", with: "")
        #expect(error(noStorage) == "/etc/bulkhead/boot.toml:1: storage.executable: missing")
    }

    @Test("a wrong type is an error naming file, line, key and both types")
    func wrongType() {
        #expect(error("pcr = \"15\"\n" + Self.minimal) == "/etc/bulkhead/boot.toml:1: pcr: expected an integer, found a string")
        let consumers = Self.minimal.replacingOccurrences(of: "consumers = [0]", with: "consumers = \"root\"")
        #expect(error(consumers) == "/etc/bulkhead/boot.toml:19: exports[0].consumers: expected an array of uids, found a string")
        #expect(error("pcr = 24\n" + Self.minimal) == "/etc/bulkhead/boot.toml:1: pcr: 24 is out of range (0...23)")
        #expect(error("sandbox = yes\n" + Self.minimal)?.hasPrefix("/etc/bulkhead/boot.toml:1: ") == true)
    }

    @Test("bulkhead boot on a bad manifest prints one line with file:line:key and starts nothing")
    func bootRefusesBadManifest() throws {
        let scratch = try Scratch()
        let runtime = scratch.file("run")
        let path = scratch.file("boot.toml")
        let text = "runtime_dir = \"\(runtime)\"\n" + Self.minimal.replacingOccurrences(of: "pool = \"pool\"", with: "pool = \"pool\"\npoool = 1")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let outcome = try run([try built("bulkhead"), "boot", "--manifest", path])
        #expect(outcome.status == 78)
        #expect(outcome.output == "bulkhead: \(path):14: crypt.poool: unknown key")
        #expect(!FileManager.default.fileExists(atPath: runtime), "nothing may be created on a bad manifest")
    }

    @Test("the TOML subset: literal strings, escapes, multi-line arrays, dotted headers, arrays of tables; syntax errors with lines")
    func tomlSubset() throws {
        let table = try parseTOML("""
            a = 'C:\\raw'   # literal
            b = "x\\ty\\"z"
            c = [
              1, # one
              2_000,
            ]
            [t.u]
            d = true
            [[e]]
            f = -3
            [[e]]
            f = 4
            """)
        #expect(table["a"]?.value == .string("C:\\raw"))
        #expect(table["b"]?.value == .string("x\ty\"z"))
        #expect(table["c"]?.value == .array([.integer(1), .integer(2000)]))
        #expect(table["c"]?.line == 3)
        guard case .table(let t)? = table["t"]?.value, case .table(let u)? = t["u"]?.value else {
            Issue.record("no [t.u]")
            return
        }
        #expect(u["d"]?.value == .boolean(true) && u["d"]?.line == 8)
        guard case .array(let e)? = table["e"]?.value else {
            Issue.record("no [[e]]")
            return
        }
        #expect(e.count == 2)

        func syntaxError(_ text: String) -> TOMLSyntaxError? {
            do {
                _ = try parseTOML(text)
                return nil
            } catch {
                return error
            }
        }
        #expect(syntaxError("a = 1\na = 2") == TOMLSyntaxError(line: 2, message: "the key \"a\" is set twice"))
        #expect(syntaxError("[s]\n[s]") == TOMLSyntaxError(line: 2, message: "table [s] is defined twice"))
        #expect(syntaxError("a = \"open\nb = 1")?.line == 1)
        #expect(syntaxError("a = 1 2")?.message == "unexpected text after the value")
        #expect(syntaxError("a = { b = 1 }")?.message == "inline tables are not supported here; use a [table] header")
        #expect(syntaxError("a = 1\n[a]\nb = 2")?.line == 2)
        #expect(syntaxError(String(repeating: "[", count: 20))?.line == 1)
    }
}
