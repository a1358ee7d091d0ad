import CTSS2

/// A secret sealed by the TPM, in the form a keyslot stores it
/// (KeyslotBlock.extra): the PCR values and PIN requirement of its policy,
/// the Name of the primary key it was sealed under, the policy digest, and
/// the sealed object's TPM2B_PUBLIC and TPM2B_PRIVATE as tpm2-tss marshals
/// them (TPM 2.0 Part 2 canonical form). Only the TPM that sealed it can
/// load the private part.
public struct TPMSealedSecret: Sendable, Equatable {
    /// The most bytes `serialized()` may produce: what KeyslotBlock.extra holds.
    public static let maxSerializedLength = 3970
    /// "BHT2": a Bulkhead TPM 2.0 sealed secret.
    static let magic: [UInt8] = [0x42, 0x48, 0x54, 0x32]
    static let version: UInt8 = 1

    /// The SHA-256 PCR values the policy requires (empty: no PCR binding).
    public let pcrValues: [Int: [UInt8]]
    /// Whether the policy includes TPM2_PolicyAuthValue (a PIN).
    public let requiresPIN: Bool
    /// The Name of the primary storage key the object was created under.
    public let primaryName: [UInt8]
    /// The object's authPolicy.
    public let policy: [UInt8]
    /// The marshalled TPM2B_PUBLIC of the sealed object.
    let publicArea: [UInt8]
    /// The marshalled TPM2B_PRIVATE of the sealed object.
    let privateArea: [UInt8]

    /// The selected PCRs, ascending.
    public var pcrs: PCRSelection { try! PCRSelection(pcrValues.keys) }

    init(
        pcrValues: [Int: [UInt8]], requiresPIN: Bool, primaryName: [UInt8], policy: [UInt8],
        publicArea: [UInt8], privateArea: [UInt8]
    ) {
        self.pcrValues = pcrValues
        self.requiresPIN = requiresPIN
        self.primaryName = primaryName
        self.policy = policy
        self.publicArea = publicArea
        self.privateArea = privateArea
    }

    /// magic(4) ‖ version(1) ‖ flags(1, bit 0: PIN) ‖ PCR bitmap(u32) ‖
    /// 32 bytes per selected PCR, ascending ‖ then four u16-length-prefixed
    /// fields: primary Name, policy digest, TPM2B_PUBLIC, TPM2B_PRIVATE.
    /// Big-endian throughout.
    public func serialized() -> [UInt8] {
        var bytes = Self.magic
        bytes.append(Self.version)
        bytes.append(requiresPIN ? 1 : 0)
        let selection = pcrs
        bytes.appendBigEndian(selection.mask)
        for index in selection.indices { bytes += pcrValues[index]! }
        for field in [primaryName, policy, publicArea, privateArea] {
            bytes.appendBigEndian(UInt16(field.count))
            bytes += field
        }
        return bytes
    }

    /// Parses `serialized()` output, checking every length against the
    /// bytes present and the TPM structures by unmarshalling them.
    public init(serialized bytes: [UInt8]) throws(TPMError) {
        guard bytes.count <= Self.maxSerializedLength else {
            throw .malformedBlob("\(bytes.count) bytes (at most \(Self.maxSerializedLength))")
        }
        var reader = BlobReader(bytes)
        guard try reader.take(4) == Self.magic else { throw .malformedBlob("bad magic") }
        let version = try reader.take(1)[0]
        guard version == Self.version else { throw .malformedBlob("unknown version \(version)") }
        let flags = try reader.take(1)[0]
        guard flags & ~1 == 0 else { throw .malformedBlob("unknown flags 0x\(String(flags, radix: 16))") }
        let selection = try PCRSelection(bitmap: reader.uint32())
        var values: [Int: [UInt8]] = [:]
        for index in selection.indices { values[index] = try reader.take(32) }
        let primaryName = try reader.field()
        let policy = try reader.field()
        let publicArea = try reader.field()
        let privateArea = try reader.field()
        guard reader.isAtEnd else { throw .malformedBlob("\(reader.remaining) trailing bytes") }
        guard policy.count == 32 else { throw .malformedBlob("policy digest of \(policy.count) bytes") }
        guard primaryName.count == 34 else { throw .malformedBlob("primary key name of \(primaryName.count) bytes") }
        self.init(
            pcrValues: values, requiresPIN: flags & 1 != 0, primaryName: primaryName, policy: policy,
            publicArea: publicArea, privateArea: privateArea)
        // The TPM structures must unmarshal exactly.
        _ = try unmarshalPublic()
        _ = try unmarshalPrivate()
    }

    func unmarshalPublic() throws(TPMError) -> TPM2B_PUBLIC {
        var value = TPM2B_PUBLIC()
        var offset = 0
        let code = publicArea.withUnsafeBufferPointer { buffer in
            Tss2_MU_TPM2B_PUBLIC_Unmarshal(buffer.baseAddress, buffer.count, &offset, &value)
        }
        guard code == TSS2_RC_SUCCESS, offset == publicArea.count else {
            throw .malformedBlob("sealed object public area does not unmarshal (\(TPMError.decode(code)))")
        }
        return value
    }

    func unmarshalPrivate() throws(TPMError) -> TPM2B_PRIVATE {
        var value = TPM2B_PRIVATE()
        var offset = 0
        let code = privateArea.withUnsafeBufferPointer { buffer in
            Tss2_MU_TPM2B_PRIVATE_Unmarshal(buffer.baseAddress, buffer.count, &offset, &value)
        }
        guard code == TSS2_RC_SUCCESS, offset == privateArea.count else {
            throw .malformedBlob("sealed object private area does not unmarshal (\(TPMError.decode(code)))")
        }
        return value
    }

    static func marshal(_ value: TPM2B_PUBLIC) throws(TPMError) -> [UInt8] {
        var value = value
        var buffer = [UInt8](repeating: 0, count: MemoryLayout<TPM2B_PUBLIC>.size)
        var offset = 0
        let code = buffer.withUnsafeMutableBufferPointer { out in
            Tss2_MU_TPM2B_PUBLIC_Marshal(&value, out.baseAddress, out.count, &offset)
        }
        guard code == TSS2_RC_SUCCESS else { throw .command("Tss2_MU_TPM2B_PUBLIC_Marshal", code: code) }
        return Array(buffer.prefix(offset))
    }

    static func marshal(_ value: TPM2B_PRIVATE) throws(TPMError) -> [UInt8] {
        var value = value
        var buffer = [UInt8](repeating: 0, count: MemoryLayout<TPM2B_PRIVATE>.size)
        var offset = 0
        let code = buffer.withUnsafeMutableBufferPointer { out in
            Tss2_MU_TPM2B_PRIVATE_Marshal(&value, out.baseAddress, out.count, &offset)
        }
        guard code == TSS2_RC_SUCCESS else { throw .command("Tss2_MU_TPM2B_PRIVATE_Marshal", code: code) }
        return Array(buffer.prefix(offset))
    }
}

/// Bounds-checked reading of a sealed blob.
struct BlobReader {
    let bytes: [UInt8]
    var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - position }
    var isAtEnd: Bool { remaining == 0 }

    mutating func take(_ count: Int) throws(TPMError) -> [UInt8] {
        guard count <= remaining else { throw .malformedBlob("truncated: \(count) bytes needed, \(remaining) left") }
        defer { position += count }
        return Array(bytes[position..<position + count])
    }

    mutating func uint32() throws(TPMError) -> UInt32 {
        try take(4).reduce(0) { $0 << 8 | UInt32($1) }
    }

    mutating func field() throws(TPMError) -> [UInt8] {
        let length = try take(2).reduce(0) { $0 << 8 | Int($1) }
        return try take(length)
    }
}
