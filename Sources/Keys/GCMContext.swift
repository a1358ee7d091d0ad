import CCryptoBoringSSL
import Crypto

/// One AES-256-GCM key, expanded once (docs/format.md, section 4), through
/// BoringSSL's AEAD interface as vendored by swift-crypto: each seal or open
/// costs the cipher and GHASH, not a key schedule or a context. BoringSSL
/// picks its VAES/AVX-512 code where the CPU has it, about 2.5 times
/// OpenSSL 3.0's speed on a 4 KiB block on this project's machines.
/// Sealing and opening may run on many threads at once with one context
/// (`EVP_AEAD_CTX_seal_scatter`'s contract), so no pool or lock is needed.
///
/// `CCryptoBoringSSL` is swift-crypto's own module, not one of its
/// products: its symbols carry that prefix, so they never meet another
/// libcrypto's, and the GCM tests (known answers, concurrent use, failed
/// opens) pin the behaviour this type relies on.
final class GCMContext: @unchecked Sendable {
    static let tagLength = 16
    static let nonceLength = 12

    // SAFETY: `context` is allocated and initialised in init, owned by this
    // object alone, only read by seal and open (which BoringSSL allows
    // concurrently), and cleaned up, zeroed and freed in deinit.
    private let context: UnsafeMutablePointer<EVP_AEAD_CTX>

    init(key: SymmetricKey) {
        precondition(key.bitCount == 256, "AES-256-GCM needs a 32-byte key")
        context = .allocate(capacity: 1)
        CCryptoBoringSSL_EVP_AEAD_CTX_zero(context)
        let status = key.withUnsafeBytes { raw in
            CCryptoBoringSSL_EVP_AEAD_CTX_init(
                context, CCryptoBoringSSL_EVP_aead_aes_256_gcm(), raw.baseAddress!.assumingMemoryBound(to: UInt8.self), raw.count,
                Self.tagLength, nil)
        }
        precondition(status == 1, "EVP_AEAD_CTX_init(aes-256-gcm) failed")
    }

    deinit {
        CCryptoBoringSSL_EVP_AEAD_CTX_cleanup(context)
        // The expanded key lives in the context's own memory.
        CCryptoBoringSSL_OPENSSL_cleanse(context, MemoryLayout<EVP_AEAD_CTX>.size)
        context.deallocate()
    }

    /// Encrypts `input` into `output` (same length; they may be the same
    /// memory) and writes the 16-byte tag.
    func seal(
        nonce: UnsafeRawBufferPointer, associatedData: UnsafeRawBufferPointer, input: UnsafeRawBufferPointer,
        output: UnsafeMutableRawBufferPointer, tag: UnsafeMutableRawBufferPointer
    ) {
        precondition(output.count == input.count && tag.count == Self.tagLength && nonce.count == Self.nonceLength)
        precondition(UnsafeRawPointer(output.baseAddress) == input.baseAddress || !overlaps(input, UnsafeRawBufferPointer(output)))
        var tagLength = 0
        // SAFETY: every pointer is valid for the length passed with it;
        // `output` is `input` or apart from it, as BoringSSL requires, and
        // the tag has room for the 16 bytes GCM writes.
        let status = CCryptoBoringSSL_EVP_AEAD_CTX_seal_scatter(
            context, bytes(output), bytes(tag), &tagLength, tag.count, bytes(nonce), nonce.count, bytes(input), input.count,
            nil, 0, bytes(associatedData), associatedData.count)
        precondition(status == 1 && tagLength == Self.tagLength, "AES-256-GCM sealing failed in BoringSSL")
    }

    /// Decrypts `input` into `output` and checks `tag`; false if it does not
    /// match. Then no plaintext is left behind: an in-place open (`output`
    /// is `input`'s memory) gets its ciphertext back, for the caller's
    /// report; a separate `output` is zeroed.
    func open(
        nonce: UnsafeRawBufferPointer, associatedData: UnsafeRawBufferPointer, input: UnsafeRawBufferPointer,
        output: UnsafeMutableRawBufferPointer, tag: UnsafeRawBufferPointer
    ) -> Bool {
        precondition(output.count == input.count && nonce.count == Self.nonceLength)
        guard tag.count == Self.tagLength else {
            if UnsafeRawPointer(output.baseAddress) != input.baseAddress { output.initializeMemory(as: UInt8.self, repeating: 0) }
            return false
        }
        guard UnsafeRawPointer(output.baseAddress) == input.baseAddress, !input.isEmpty else {
            precondition(!overlaps(input, UnsafeRawBufferPointer(output)))
            return openApart(nonce: nonce, associatedData: associatedData, input: input, output: output, tag: tag)
        }
        // BoringSSL zeroes the output of a failed open, so in place the
        // ciphertext would be gone: open from a copy, and put the copy
        // back if the tag does not match.
        guard input.count <= Self.stackCopyLimit else {
            return withUnsafeTemporaryAllocation(byteCount: input.count, alignment: 16) { copy in
                openFromCopy(copy, nonce: nonce, associatedData: associatedData, input: input, output: output, tag: tag)
            }
        }
        // A block's copy lives on the stack: `withUnsafeTemporaryAllocation`
        // of 4 KiB went to the heap, a malloc and a free per block opened,
        // and with the storage reader and ParallelWork's helpers opening at
        // once, their malloc arena's lock was most of cryptd's futex calls.
        var copy = StackCopy(repeating: 0)
        var span = copy.mutableSpan
        return span.withUnsafeMutableBytes { whole in
            openFromCopy(
                UnsafeMutableRawBufferPointer(rebasing: whole[..<input.count]), nonce: nonce, associatedData: associatedData,
                input: input, output: output, tag: tag)
        }
    }

    /// Decrypts `buffer` in place and checks `tag`, with no copy kept: on
    /// failure the buffer is zeroed, the ciphertext gone. For callers that
    /// can read the block again to report a failure (`open` keeps it, at
    /// the cost of copying every block first).
    func openInPlace(
        nonce: UnsafeRawBufferPointer, associatedData: UnsafeRawBufferPointer, buffer: UnsafeMutableRawBufferPointer,
        tag: UnsafeRawBufferPointer
    ) -> Bool {
        precondition(nonce.count == Self.nonceLength)
        guard tag.count == Self.tagLength,
            openApart(nonce: nonce, associatedData: associatedData, input: UnsafeRawBufferPointer(buffer), output: buffer, tag: tag)
        else {
            // BoringSSL zeroes a failed open's output; this does not rely on it.
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            return false
        }
        return true
    }

    /// An in-place open (`output` is `input`) through `copy`, which has
    /// `input`'s length and is apart from it.
    private func openFromCopy(
        _ copy: UnsafeMutableRawBufferPointer, nonce: UnsafeRawBufferPointer, associatedData: UnsafeRawBufferPointer,
        input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer, tag: UnsafeRawBufferPointer
    ) -> Bool {
        copy.copyMemory(from: input)
        let opened = openApart(nonce: nonce, associatedData: associatedData, input: UnsafeRawBufferPointer(copy), output: output, tag: tag)
        if !opened { output.copyMemory(from: UnsafeRawBufferPointer(copy)) }
        return opened
    }

    /// The stack memory an in-place open copies its ciphertext to: one
    /// pool block (docs/format.md, section 2).
    private typealias StackCopy = InlineArray<4096, UInt8>

    /// The largest in-place open whose ciphertext copy goes on the stack.
    static var stackCopyLimit: Int { StackCopy.count }

    /// `open` into memory apart from `input`, or exactly `input`'s memory
    /// (BoringSSL allows both): zeroed on failure.
    private func openApart(
        nonce: UnsafeRawBufferPointer, associatedData: UnsafeRawBufferPointer, input: UnsafeRawBufferPointer,
        output: UnsafeMutableRawBufferPointer, tag: UnsafeRawBufferPointer
    ) -> Bool {
        // SAFETY: every pointer is valid for the length passed with it, and
        // `output` is `input` or does not overlap it.
        CCryptoBoringSSL_EVP_AEAD_CTX_open_gather(
            context, bytes(output), bytes(nonce), nonce.count, bytes(input), input.count, bytes(tag), tag.count,
            bytes(associatedData), associatedData.count) == 1
    }

    private func overlaps(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        guard let x = a.baseAddress, let y = b.baseAddress, !a.isEmpty, !b.isEmpty else { return false }
        return x < y + b.count && y < x + a.count
    }

    private func bytes(_ buffer: UnsafeRawBufferPointer) -> UnsafePointer<UInt8>? {
        buffer.baseAddress?.assumingMemoryBound(to: UInt8.self)
    }

    private func bytes(_ buffer: UnsafeMutableRawBufferPointer) -> UnsafeMutablePointer<UInt8>? {
        buffer.baseAddress?.assumingMemoryBound(to: UInt8.self)
    }
}
