import CLibCrypto
import Crypto
import Threads

/// One OpenSSL AES-256-GCM cipher context with its key already expanded
/// (docs/format.md, section 4): each seal or open only sets the nonce, so
/// a block costs the cipher and GHASH, not a key schedule. Not thread-safe;
/// `GCMContextPool` hands each to one thread at a time.
final class GCMContext: @unchecked Sendable {
    static let tagLength = 16
    static let nonceLength = 12

    // SAFETY: `handle` is created in init, owned by this object alone, and
    // freed (OpenSSL cleanses the key schedule) in deinit. It may move
    // between threads but is used by one at a time (GCMContextPool).
    private let handle: OpaquePointer

    init(key: SymmetricKey) {
        precondition(key.bitCount == 256, "AES-256-GCM needs a 32-byte key")
        guard let handle = EVP_CIPHER_CTX_new() else { fatalError("EVP_CIPHER_CTX_new failed: out of memory") }
        self.handle = handle
        let status = key.withUnsafeBytes { raw in
            EVP_CipherInit_ex(handle, EVP_aes_256_gcm(), nil, raw.baseAddress!.assumingMemoryBound(to: UInt8.self), nil, 1)
        }
        precondition(status == 1, "EVP_CipherInit_ex(aes-256-gcm) failed")
    }

    deinit { EVP_CIPHER_CTX_free(handle) }

    /// Encrypts `input` into `output` (same length; they may be the same
    /// memory) and writes the 16-byte tag.
    func seal(
        nonce: UnsafeRawBufferPointer, associatedData: UnsafeRawBufferPointer, input: UnsafeRawBufferPointer,
        output: UnsafeMutableRawBufferPointer, tag: UnsafeMutableRawBufferPointer
    ) {
        precondition(output.count == input.count && tag.count == Self.tagLength && nonce.count == Self.nonceLength)
        // SAFETY: every pointer is valid for the length passed with it; GCM
        // writes exactly `input.count` bytes of output and nothing at final.
        var ok = EVP_CipherInit_ex(handle, nil, nil, nil, bytes(nonce), 1) == 1
        ok = ok && update(output: nil, input: associatedData)
        ok = ok && update(output: output.baseAddress, input: input)
        var finalLength: Int32 = 0
        var scratch = (UInt64(0), UInt64(0))
        ok = ok && withUnsafeMutableBytes(of: &scratch) { EVP_CipherFinal_ex(handle, $0.baseAddress!.assumingMemoryBound(to: UInt8.self), &finalLength) } == 1
        ok = ok && EVP_CIPHER_CTX_ctrl(handle, EVP_CTRL_AEAD_GET_TAG, Int32(Self.tagLength), tag.baseAddress) == 1
        precondition(ok && finalLength == 0, "AES-256-GCM sealing failed in libcrypto")
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
            output.initializeMemory(as: UInt8.self, repeating: 0)
            return false
        }
        // SAFETY: as in `seal`; the tag is only read (the control call takes
        // a non-const pointer but copies from it).
        var ok = EVP_CipherInit_ex(handle, nil, nil, nil, bytes(nonce), 0) == 1
        ok = ok && update(output: nil, input: associatedData)
        ok = ok && update(output: output.baseAddress, input: input)
        ok = ok && EVP_CIPHER_CTX_ctrl(handle, EVP_CTRL_AEAD_SET_TAG, Int32(Self.tagLength), UnsafeMutableRawPointer(mutating: tag.baseAddress)) == 1
        var finalLength: Int32 = 0
        var scratch = (UInt64(0), UInt64(0))
        ok = ok && withUnsafeMutableBytes(of: &scratch) { EVP_CipherFinal_ex(handle, $0.baseAddress!.assumingMemoryBound(to: UInt8.self), &finalLength) } == 1
        if !ok {
            if UnsafeRawPointer(output.baseAddress) == input.baseAddress, !output.isEmpty {
                // CTR mode is its own inverse: the same nonce's keystream
                // turns the unauthenticated plaintext back into ciphertext.
                var restored = EVP_CipherInit_ex(handle, nil, nil, nil, bytes(nonce), 1) == 1
                restored = restored && update(output: output.baseAddress, input: UnsafeRawBufferPointer(output))
                if restored { return false }
            }
            output.initializeMemory(as: UInt8.self, repeating: 0)
        }
        return ok
    }

    /// Feeds `input` (associated data when `output` is nil) to the cipher.
    private func update(output: UnsafeMutableRawPointer?, input: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        // EVP takes int lengths; blocks are far smaller, but stay correct for any size.
        while offset < input.count {
            let length = min(input.count - offset, Int(Int32.max) & ~15)
            var written: Int32 = 0
            let target = output.map { ($0 + offset).assumingMemoryBound(to: UInt8.self) }
            guard EVP_CipherUpdate(handle, target, &written, bytes(input)! + offset, Int32(length)) == 1,
                output == nil || Int(written) == length
            else { return false }
            offset += length
        }
        return true
    }

    private func bytes(_ buffer: UnsafeRawBufferPointer) -> UnsafePointer<UInt8>? {
        buffer.baseAddress?.assumingMemoryBound(to: UInt8.self)
    }
}

/// The cipher contexts of one key, each lent to one thread at a time: as
/// many exist as threads have used the key at once, so the key is expanded
/// once per concurrent user instead of once per block.
final class GCMContextPool: Sendable {
    private let key: SymmetricKey
    /// A context taken out belongs to the borrowing thread until it is put
    /// back. A plain futex mutex: Synchronization.Mutex's priority-inheriting
    /// lock cost more than the cipher under 32 request threads on 2 cores.
    private let idle: Guarded<[GCMContext]>

    init(key: SymmetricKey) {
        self.key = key
        idle = Guarded([GCMContext(key: key)])
    }

    func withContext<T, E: Error>(_ body: (GCMContext) throws(E) -> T) throws(E) -> T {
        let context = idle.withLock { $0.popLast() } ?? GCMContext(key: key)
        defer { idle.withLock { $0.append(context) } }
        return try body(context)
    }
}
