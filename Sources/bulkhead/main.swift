import ArgumentParser
import BulkheadVersion

/// The toolstack: what runs in dom0's initramfs. It measures and launches the
/// storage and crypt domains, supervises them, attaches root through the
/// chain and administers pools. It never holds key material.
@main
struct Bulkhead: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulkhead",
        abstract: "Bulkhead toolstack: launch, supervise and administer the storage and crypt domains.",
        discussion: """
            Bulkhead takes disk drivers and the disk backend out of the trusted computing base: \
            bulkhead-storaged serves raw ciphertext blocks over NBD and is untrusted; \
            bulkhead-cryptd holds the keys and serves authenticated, rollback-protected volumes. \
            Pool administration (format, volume, keyslot, verify) and `bulkhead boot` are not built yet.
            """,
        version: BulkheadVersion.string)
}
