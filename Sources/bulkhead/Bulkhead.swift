import ArgumentParser
import BulkheadVersion

/// The toolstack: what runs in dom0's initramfs. It measures and launches the
/// storage and crypt domains, supervises them, attaches root through the
/// chain and administers pools. `bulkhead boot` never holds key material.
/// The administration commands below either open the pool themselves, like
/// cryptsetup, which must not happen while a crypt domain serves it, or,
/// with `--control SOCKET`, ask the crypt domain serving it to do the work
/// where the key is (docs/control.md).
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
            Do not open a pool a crypt domain serves: administer it through the crypt domain with --control SOCKET.
            """,
        version: BulkheadVersion.string,
        subcommands: [Format.self, VolumeCommand.self, Dump.self, KeyslotCommand.self, Verify.self, Boot.self, Status.self, EventLog.self])
}
