import PoolFormat

/// Sealing with the tag and associated data held inline, as block pointers
/// carry them: nothing allocated per block.
extension BlockSealer {
    /// Seals `plaintext` into `ciphertext` (same length; may be the same
    /// memory) and writes the tag straight into `tag`.
    public func seal(
        _ plaintext: UnsafeRawBufferPointer, into ciphertext: UnsafeMutableRawBufferPointer, tag: inout BlockTag,
        counter: NonceCounter, associatedData: AssociatedBytes
    ) {
        tag.withUnsafeMutableBytes { tagBytes in
            associatedData.withUnsafeBytes { ad in
                seal(plaintext, into: ciphertext, tag: tagBytes, counter: counter, associatedData: ad)
            }
        }
    }

    /// Opens `ciphertext` into `plaintext` (same length; may be the same
    /// memory); on failure no plaintext is left, as with the buffer form.
    public func open(
        _ ciphertext: UnsafeRawBufferPointer, into plaintext: UnsafeMutableRawBufferPointer, tag: BlockTag,
        counter: NonceCounter, associatedData: AssociatedBytes
    ) throws(SealError) {
        try tag.withUnsafeBytes { (tagBytes) throws(SealError) in
            try associatedData.withUnsafeBytes { (ad) throws(SealError) in
                try open(ciphertext, into: plaintext, tag: tagBytes, counter: counter, associatedData: ad)
            }
        }
    }

    /// Opens `buffer` in place keeping no copy of the ciphertext: zeroed
    /// on failure, as with the buffer form.
    public func openInPlace(
        _ buffer: UnsafeMutableRawBufferPointer, tag: BlockTag, counter: NonceCounter, associatedData: AssociatedBytes
    ) throws(SealError) {
        try tag.withUnsafeBytes { (tagBytes) throws(SealError) in
            try associatedData.withUnsafeBytes { (ad) throws(SealError) in
                try openInPlace(buffer, tag: tagBytes, counter: counter, associatedData: ad)
            }
        }
    }

    /// Seals a whole block image (metadata); returns the ciphertext and its tag.
    public func seal(_ plaintext: [UInt8], counter: NonceCounter, associatedData: AssociatedBytes) -> (ciphertext: [UInt8], tag: BlockTag) {
        var ciphertext = [UInt8](repeating: 0, count: plaintext.count)
        var tag = BlockTag.zero
        plaintext.withUnsafeBytes { source in
            ciphertext.withUnsafeMutableBytes { target in
                seal(source, into: target, tag: &tag, counter: counter, associatedData: associatedData)
            }
        }
        return (ciphertext, tag)
    }

    /// Opens a sealed block image, or throws if anything about it is not as sealed.
    public func open(
        _ ciphertext: some Collection<UInt8>, tag: BlockTag, counter: NonceCounter, associatedData: AssociatedBytes
    ) throws(SealError) -> [UInt8] {
        let input = Array(ciphertext)
        var plaintext = [UInt8](repeating: 0, count: input.count)
        let opened = input.withUnsafeBytes { source in
            plaintext.withUnsafeMutableBytes { target in
                do throws(SealError) {
                    try open(source, into: target, tag: tag, counter: counter, associatedData: associatedData)
                    return true
                } catch { return false }
            }
        }
        guard opened else { throw SealError() }
        return plaintext
    }
}
