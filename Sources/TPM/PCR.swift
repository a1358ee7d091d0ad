import CTSS2

/// A set of PCRs of the SHA-256 bank, the only bank this layer uses.
public struct PCRSelection: Sendable, Hashable, CustomStringConvertible {
    /// Platform PCRs 0...23 (TPM 2.0 PC Client profile).
    public static let count = 24

    /// The selected PCR indices, ascending and without duplicates.
    public let indices: [Int]

    public init(_ indices: some Sequence<Int>) throws(TPMError) {
        let sorted = Array(Set(indices)).sorted()
        for index in sorted where !(0..<Self.count).contains(index) {
            throw .invalidArgument("PCR \(index) (valid: 0...\(Self.count - 1))")
        }
        self.indices = sorted
    }

    /// The 3-byte PCR bitmap of TPMS_PCR_SELECTION.pcrSelect.
    public var bitmap: [UInt8] {
        var bits: [UInt8] = [0, 0, 0]
        for index in indices { bits[index / 8] |= 1 << UInt8(index % 8) }
        return bits
    }

    /// Parses the bitmap form back (bits past PCR 23 are refused).
    init(bitmap: UInt32) throws(TPMError) {
        guard bitmap >> UInt32(Self.count) == 0 else { throw .malformedBlob("PCR bitmap 0x\(hex(bitmap))") }
        try self.init((0..<Self.count).filter { bitmap & (1 << UInt32($0)) != 0 })
    }

    var mask: UInt32 { indices.reduce(0) { $0 | (1 << UInt32($1)) } }

    /// TPML_PCR_SELECTION with one SHA-256 entry; `nil` for an empty selection.
    var list: TPML_PCR_SELECTION {
        var list = TPML_PCR_SELECTION()
        guard !indices.isEmpty else { return list }
        list.count = 1
        list.pcrSelections.0.hash = TPM2_ALG_SHA256
        list.pcrSelections.0.sizeofSelect = 3
        _ = store(bitmap, into: &list.pcrSelections.0.pcrSelect)
        return list
    }

    public var description: String { "sha256:" + indices.map(String.init).joined(separator: ",") }
}

extension TPMContext {
    /// Reads the SHA-256 bank values of `selection` (TPM2_PCR_Read, repeated
    /// because one read returns at most eight digests). Keys are PCR indices.
    public func readPCRs(_ selection: PCRSelection) throws(TPMError) -> [Int: [UInt8]] {
        var values: [Int: [UInt8]] = [:]
        var remaining = selection.indices
        while !remaining.isEmpty {
            var request = try PCRSelection(remaining).list
            var selectedOut: UnsafeMutablePointer<TPML_PCR_SELECTION>?
            var digests: UnsafeMutablePointer<TPML_DIGEST>?
            var updateCounter: UInt32 = 0
            try call("Esys_PCR_Read") { esys in
                Esys_PCR_Read(
                    esys, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                    &request, &updateCounter, &selectedOut, &digests)
            }
            defer {
                Esys_Free(selectedOut)
                Esys_Free(digests)
            }
            // The returned selection says which PCRs the digests are, in order.
            var returned: [Int] = []
            let out = selectedOut!.pointee
            if out.count > 0 {
                let bits = load(Int(out.pcrSelections.0.sizeofSelect), from: out.pcrSelections.0.pcrSelect)
                for index in 0..<min(bits.count * 8, PCRSelection.count) where bits[index / 8] & (1 << UInt8(index % 8)) != 0 {
                    returned.append(index)
                }
            }
            let list = digests!.pointee
            guard !returned.isEmpty, returned.count == Int(list.count) else {
                throw .command("Esys_PCR_Read (returned \(list.count) digests for \(returned.count) PCRs)", code: 0)
            }
            withUnsafeBytes(of: list.digests) { raw in
                let entries = raw.bindMemory(to: TPM2B_DIGEST.self)
                for (position, index) in returned.enumerated() { values[index] = entries[position].bytes }
            }
            remaining.removeAll { returned.contains($0) }
        }
        return values
    }

    /// Extends SHA-256 PCR `index` with `digest` (TPM2_PCR_Extend, empty
    /// PCR authorization): new = SHA-256(old ‖ digest).
    public func extendPCR(_ index: Int, digest: [UInt8]) throws(TPMError) {
        guard (0..<PCRSelection.count).contains(index) else { throw .invalidArgument("PCR \(index)") }
        guard digest.count == 32 else { throw .invalidArgument("SHA-256 extend digest of \(digest.count) bytes") }
        var values = TPML_DIGEST_VALUES()
        values.count = 1
        values.digests.0.hashAlg = TPM2_ALG_SHA256
        _ = store(digest, into: &values.digests.0.digest.sha256)
        try call("Esys_PCR_Extend") { esys in
            Esys_PCR_Extend(
                esys, ESYS_TR(ESYS_TR_PCR0) + ESYS_TR(index), ESYS_TR(ESYS_TR_PASSWORD),
                ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), &values)
        }
    }

    /// The PCRs of `expected` whose current value differs, ascending: what a
    /// refused PolicyPCR is reported as.
    public func differingPCRs(from expected: [Int: [UInt8]]) throws(TPMError) -> [Int] {
        guard !expected.isEmpty else { return [] }
        let current = try readPCRs(PCRSelection(expected.keys))
        return expected.keys.sorted().filter { current[$0] != expected[$0] }
    }
}
