#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import LaunchMeasurement
import TPM

/// Measured launch (docs/toolstack.md, "What is measured"): before a domain
/// starts, each of its events is appended to the event log and then
/// extended into the manifest's PCR.
public enum Measurement {
    /// SHA-256 of the file at `path`, read in 1 MiB pieces.
    public static func fileDigest(_ path: String) throws(ToolstackError) -> [UInt8] {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw ToolstackError("cannot read \(path): \(systemMessage(errno))")
        }
        defer { try? handle.close() }
        var hasher = SHA256()
        while true {
            let chunk: Data
            do { chunk = try handle.read(upToCount: 1 << 20) ?? Data() } catch {
                throw ToolstackError("cannot read \(path): \(error.localizedDescription)")
            }
            if chunk.isEmpty { break }
            hasher.update(data: chunk)
        }
        return Array(hasher.finalize())
    }

    /// The SHA-256 of each domain's executable as it is on disk now, read
    /// under `root` (a staged or unpacked initramfs) if given.
    public static func executableDigests(for manifest: BootManifest, under root: String? = nil) throws(ToolstackError) -> [DomainRole: [UInt8]] {
        var digests: [DomainRole: [UInt8]] = [:]
        for role in DomainRole.allCases { digests[role] = try fileDigest((root ?? "") + manifest.launch(role).executable) }
        return digests
    }

    /// The PCR values a boot from the manifest at `path` will reach, from
    /// reset PCRs, with the executables as they are on disk now (under
    /// `root`, the tree the boot will run from, if given): what
    /// `bulkhead keyslot add --tpm2 --tpm2-predict MANIFEST [--tpm2-predict-root DIR]` seals to.
    public static func predictedPCRs(forManifestAt path: String, under root: String? = nil) throws(ToolstackError) -> [Int: [UInt8]] {
        let manifest = try ManifestFile.load(path)
        return LaunchMeasurement.predictedPCRs(for: manifest, executableDigests: try executableDigests(for: manifest, under: root))
    }

    /// Logs then extends `events`. The log is appended to, never truncated:
    /// it lives in the runtime folder (a tmpfs) and so covers every extend
    /// since the TPM was reset.
    public static func record(_ events: [LaunchEvent], logPath: String, tpm: TPMContext?) throws(ToolstackError) {
        for event in events {
            try append(EventLogFormat.line(for: event), to: logPath)
            guard let tpm else { continue }
            do { try tpm.extendPCR(event.pcr, digest: event.digestBytes ?? []) } catch {
                throw ToolstackError("cannot extend PCR \(event.pcr) for the \(event.domain.rawValue) domain's \(event.kind.rawValue): \(error)")
            }
        }
    }

    static func append(_ line: String, to path: String) throws(ToolstackError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ToolstackError("cannot open the event log \(path): \(systemMessage(errno))") }
        defer { close(fd) }
        let bytes = Array(line.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count, fsync(fd) == 0 else { throw ToolstackError("cannot write the event log \(path): \(systemMessage(errno))") }
    }

    /// The event log at `path`.
    public static func readLog(_ path: String) throws(ToolstackError) -> [LaunchEvent] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ToolstackError("cannot read the event log \(path): \(systemMessage(errno))")
        }
        do { return try EventLogFormat.events(from: text) } catch { throw ToolstackError("\(path): \(error)") }
    }
}

/// Reads manifest files.
public enum ManifestFile {
    /// Largest manifest read.
    public static let maximumBytes = 1 << 20

    public static func load(_ path: String) throws(ToolstackError) -> BootManifest {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ToolstackError("\(path): cannot read: \(systemMessage(errno))")
        }
        guard data.count <= maximumBytes else { throw ToolstackError("\(path): larger than \(maximumBytes) bytes") }
        guard let text = String(data: data, encoding: .utf8) else { throw ToolstackError("\(path):1: not UTF-8 text") }
        do { return try BootManifest(parsing: text, file: path) } catch { throw ToolstackError(error.description) }
    }
}
