import ArgumentParser
import BulkheadVersion

/// The toolstack: what runs in dom0's initramfs. It measures and launches the
/// storage and crypt domains, supervises them, attaches root through the
/// chain and administers pools. `bulkhead boot` never holds key material;
/// the administration commands below open the pool themselves, like
/// cryptsetup, and must not run while a crypt domain serves the same pool.
@main
struct Bulkhead: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulkhead",
        abstract: "Bulkhead toolstack: launch, supervise and administer the storage and crypt domains.",
        discussion: """
            Bulkhead takes disk drivers and the disk backend out of the trusted computing base: \
            bulkhead-storaged serves raw ciphertext blocks over NBD and is untrusted; \
            bulkhead-cryptd holds the keys and serves authenticated, rollback-protected volumes. \
            STORAGE is nbd:unix:PATH[#EXPORT] (a storage domain's export) or the path of an image file. \
            Do not administer a pool while a crypt domain serves it.
            """,
        version: BulkheadVersion.string,
        subcommands: [Format.self, VolumeCommand.self, Dump.self, KeyslotCommand.self, Verify.self, Boot.self, Status.self, EventLog.self])
}
