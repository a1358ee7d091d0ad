import Crypto

/// One measurement `bulkhead boot` makes before starting a domain
/// (docs/toolstack.md, "What is measured"): the PCR extended, and the
/// SHA-256 digest extended into it.
public struct LaunchEvent: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable {
        /// SHA-256 of the executable file's bytes; `detail` is its path.
        case executable
        /// SHA-256 of the canonical configuration; `detail` is that text.
        case configuration
    }

    public var pcr: Int
    public var domain: DomainRole
    public var kind: Kind
    /// The 32-byte SHA-256 digest, lowercase hex.
    public var digest: String
    public var detail: String

    public init(pcr: Int, domain: DomainRole, kind: Kind, digest: [UInt8], detail: String) {
        self.pcr = pcr
        self.domain = domain
        self.kind = kind
        self.digest = hexString(digest)
        self.detail = detail
    }

    /// The digest's bytes; nil if the hex is malformed.
    public var digestBytes: [UInt8]? {
        guard let bytes = bytes(fromHex: digest), bytes.count == SHA256.byteCount else { return nil }
        return bytes
    }
}

/// The SHA-256 digest of `bytes`.
public func sha256(_ bytes: some Sequence<UInt8>) -> [UInt8] {
    var hasher = SHA256()
    hasher.update(data: Array(bytes))
    return Array(hasher.finalize())
}

/// The events of one domain's launch, in the order they are extended:
/// its executable, then its canonical configuration.
public func launchEvents(for launch: DomainLaunch, pcr: Int, executableDigest: [UInt8]) -> [LaunchEvent] {
    let configuration = canonicalConfiguration(of: launch, seccompAllowlist: SyscallAllowlist.names(for: launch.role))
    return [
        LaunchEvent(pcr: pcr, domain: launch.role, kind: .executable, digest: executableDigest, detail: launch.executable),
        LaunchEvent(pcr: pcr, domain: launch.role, kind: .configuration, digest: sha256(configuration.utf8), detail: configuration),
    ]
}

extension BootManifest {
    /// Every event of a boot from this manifest, storage domain first.
    /// `executableDigests` holds the SHA-256 of each domain's executable
    /// (what `bulkhead boot` reads from disk when it launches it).
    public func launchEvents(executableDigests: [DomainRole: [UInt8]]) -> [LaunchEvent] {
        DomainRole.allCases.flatMap { role in
            LaunchMeasurement.launchEvents(for: launch(role), pcr: pcr, executableDigest: executableDigests[role] ?? [])
        }
    }
}

/// The SHA-256 PCR extend: new = SHA-256(old ‖ digest).
public func extendPCR(_ value: [UInt8], with digest: [UInt8]) -> [UInt8] {
    sha256(value + digest)
}

/// A PCR after reset: 32 zero bytes (PCRs 0...15 of the PC Client profile).
public let resetPCRValue = [UInt8](repeating: 0, count: SHA256.byteCount)

/// The PCR values `events` lead to from `initial` (each PCR not in
/// `initial` starts at the reset value). Keys are PCR indices.
public func replay(_ events: [LaunchEvent], from initial: [Int: [UInt8]] = [:]) -> [Int: [UInt8]] {
    var values = initial
    for event in events {
        values[event.pcr] = extendPCR(values[event.pcr] ?? resetPCRValue, with: event.digestBytes ?? [])
    }
    return values
}

/// The PCR values after a boot from `manifest`, from `initial` (reset
/// values by default): what a TPM keyslot sealed to a future launch
/// expects (`bulkhead keyslot add --tpm2 --tpm2-predict MANIFEST`).
public func predictedPCRs(
    for manifest: BootManifest, executableDigests: [DomainRole: [UInt8]], from initial: [Int: [UInt8]] = [:]
) -> [Int: [UInt8]] {
    var values = replay(manifest.launchEvents(executableDigests: executableDigests), from: initial)
    if values[manifest.pcr] == nil { values[manifest.pcr] = initial[manifest.pcr] ?? resetPCRValue }
    return values
}

/// Lowercase hex of `bytes`.
public func hexString(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var characters: [UInt8] = []
    characters.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        characters.append(digits[Int(byte >> 4)])
        characters.append(digits[Int(byte & 0x0f)])
    }
    return String(decoding: characters, as: UTF8.self)
}

/// The bytes of lowercase or uppercase hex; nil if malformed.
public func bytes(fromHex text: String) -> [UInt8]? {
    let characters = Array(text.utf8)
    guard characters.count % 2 == 0 else { return nil }
    func nibble(_ character: UInt8) -> UInt8? {
        switch character {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): character - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): character - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): character - UInt8(ascii: "A") + 10
        default: nil
        }
    }
    var result: [UInt8] = []
    result.reserveCapacity(characters.count / 2)
    var index = 0
    while index < characters.count {
        guard let high = nibble(characters[index]), let low = nibble(characters[index + 1]) else { return nil }
        result.append(high << 4 | low)
        index += 2
    }
    return result
}
