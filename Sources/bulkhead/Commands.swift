import ArgumentParser
import CryptPool
import DaemonSupport
import Foundation
import Keys
import PoolFormat
import TPM

struct Format: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a new pool, with a passphrase keyslot and a recovery key printed once.")

    @OptionGroup var options: PoolOptions

    @Option(name: .customLong("scrypt-log2n"), help: ArgumentHelp("scrypt cost as log2(N); default: tuned to about 1 s here.", valueName: "n"))
    var scryptLog2N: UInt8?

    @Option(name: .customLong("recovery-key-out"), help: ArgumentHelp("Write the recovery key to this new file (mode 0600) instead of printing it.", valueName: "path"))
    var recoveryKeyOut: String?

    func run() throws {
        guard options.control == nil else { throw commandFailure(program, "format works offline: leave out --control", status: usageExitCode) }
        guard options.recoveryKeyFile == nil else {
            throw commandFailure(program, "format makes a new recovery key; --recovery-key-file does not apply", status: usageExitCode)
        }
        let cost = scryptLog2N.map { ScryptCost(log2N: $0) } ?? .tune()
        guard cost.isWithinBounds else {
            throw commandFailure(program, "--scrypt-log2n must be from \(ScryptCost.minimumLog2N) to \(ScryptCost.maximumLog2N)", status: usageExitCode)
        }
        let passphrase: [UInt8]
        do {
            if let keyFile = options.keyFile {
                passphrase = try SecretInput.keyFile(keyFile)
            } else {
                passphrase = try SecretInput.prompt("New passphrase: ")
                guard try SecretInput.prompt("Repeat the passphrase: ") == passphrase else {
                    throw commandFailure(program, "the passphrases differ")
                }
            }
        } catch let error as SecretInputError {
            throw commandFailure(program, error.description)
        }
        let device = try options.device()
        let result: FormatResult
        do { result = try Pool.format(storage: device, passphrase: passphrase, cost: cost, anchor: try options.anchor()) } catch let error as PoolError {
            throw commandFailure(program, "cannot format: \(error)")
        }
        let summary = result.pool.summary()
        let key = result.recoveryKey.formatted()
        if let recoveryKeyOut {
            let fd = open(recoveryKeyOut, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw commandFailure(program, "cannot create \(recoveryKeyOut): \(String(cString: strerror(errno)))") }
            let line = key + "\n"
            _ = line.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
            fsync(fd)
            close(fd)
            print("Formatted pool \(summary.poolID): \(formatSize(summary.blockCount * 4096)), recovery key written to \(recoveryKeyOut).")
        } else {
            print("Formatted pool \(summary.poolID): \(formatSize(summary.blockCount * 4096)).")
            print("Recovery key (shown once; write it down, it unlocks the pool without the passphrase):")
            print("  \(key)")
        }
    }
}

struct VolumeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "volume", abstract: "Create, list and delete volumes.",
        subcommands: [Create.self, List.self, Delete.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a thin volume; it reads as zeroes until written.")
        @OptionGroup var options: PoolOptions
        @Argument(help: "The volume's name (letters, digits, '-', '_', '.').") var name: String?
        @Option(name: .customLong("size"), help: ArgumentHelp("Size, e.g. 10G; a multiple of 4096.", valueName: "size")) var size: String

        func run() throws {
            let (options, name) = try options.withOperand(name)
            let bytes = try parseSize(size)
            if let address = try options.controlAddress() {
                let response = try options.ask(ControlRequest(operation: .volumeCreate, name: name, size: bytes), at: address)
                print(response.message ?? "Created volume \(name).")
                return
            }
            let pool = try options.openPool()
            do {
                let info = try pool.createVolume(name: name, size: bytes)
                print("Created volume \(info.name) (\(formatSize(info.size))).")
            } catch {
                throw commandFailure(program, "\(error)")
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the pool's volumes.")
        @OptionGroup var options: PoolOptions

        func run() throws {
            if let address = try options.controlAddress() {
                let status = try options.ask(ControlRequest(operation: .status), at: address).status
                for volume in status?.volumes ?? [] { print("\(volume.name)\t\(volume.size)\t\(formatSize(volume.size))") }
                return
            }
            let pool = try options.openPool()
            for volume in pool.volumes { print("\(volume.name)\t\(volume.size)\t\(formatSize(volume.size))") }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a volume; its key is erased from the volume table.")
        @OptionGroup var options: PoolOptions
        @Argument(help: "The volume's name.") var name: String?

        func run() throws {
            let (options, name) = try options.withOperand(name)
            if let address = try options.controlAddress() {
                let response = try options.ask(ControlRequest(operation: .volumeDelete, name: name), at: address)
                print(response.message ?? "Deleted volume \(name).")
                return
            }
            let pool = try options.openPool()
            do { try pool.deleteVolume(name: name) } catch { throw commandFailure(program, "\(error)") }
            print("Deleted volume \(name).")
        }
    }
}

struct Dump: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the pool's structure, keyslots and volumes (never key material).")
    @OptionGroup var options: PoolOptions

    func run() throws {
        if let address = try options.controlAddress() {
            guard let status = try options.ask(ControlRequest(operation: .status), at: address).status else {
                throw commandFailure(program, "the crypt domain sent no status")
            }
            print("Pool:        \(status.poolID) (served by the crypt domain at \(address))")
            print("Size:        \(formatSize(status.blockCount * 4096)) (\(status.blockCount) blocks, \(status.freeBlocks) free)")
            print("Generation:  \(status.generation)")
            print("Epoch:       \(status.anchorEpoch)")
            print("Keyslots:")
            for slot in status.keyslots {
                let tpm = slot.pcrs.map { pcrs in
                    "  pcrs sha256:" + (pcrs.isEmpty ? "none" : pcrs.map(String.init).joined(separator: ",")) + (slot.pin == true ? " +pin" : "")
                }
                print("  \(slot.slot): \(slot.type)\(tpm ?? "")")
            }
            print("Volumes:")
            for volume in status.volumes { print("  \(volume.name)  \(formatSize(volume.size))\(volume.served ? "  served" : "")") }
            return
        }
        let pool = try options.openPool()
        let summary = pool.summary()
        print("Pool:        \(summary.poolID)")
        print("Format:      Bulkhead pool version \(PoolLayout.formatVersion), \(PoolLayout.blockSize)-byte blocks")
        print("Size:        \(formatSize(summary.blockCount * 4096)) (\(summary.blockCount) blocks, \(summary.freeBlocks) free)")
        print("Generation:  \(summary.generation)")
        print("Epoch:       \(pool.anchorEpoch)")
        print("Log records: \(summary.logRecords) since the last checkpoint")
        print("Keyslots:")
        for slot in summary.keyslots {
            let cost = slot.cost.map { "  scrypt N=2^\($0.log2N) r=\($0.r) p=\($0.p)" } ?? ""
            let tpm = slot.sealedObject.map { TPMKeyslotInfo(extra: $0).map { "  \($0)" } ?? "  (unreadable sealed object)" } ?? ""
            print("  \(slot.slot): \(slot.type)\(cost)\(tpm)")
        }
        print("Volumes:")
        for volume in summary.volumes { print("  \(volume.name)  id \(volume.id)  \(formatSize(volume.size))") }
    }
}

struct KeyslotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyslot", abstract: "Add and remove keyslots.", subcommands: [Add.self, Remove.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a passphrase keyslot, or with --tpm2 a keyslot the TPM unseals, unlocking with an existing one.")
        @OptionGroup var options: PoolOptions
        @OptionGroup var tpm2: TPM2EnrolmentOptions
        @Option(name: .customLong("new-key-file"), help: ArgumentHelp("The new passphrase, from this file.", valueName: "path"))
        var newKeyFile: String?
        @Option(name: .customLong("scrypt-log2n"), help: ArgumentHelp("scrypt cost as log2(N); default: tuned.", valueName: "n"))
        var scryptLog2N: UInt8?

        func run() throws {
            if tpm2.tpm2 {
                guard newKeyFile == nil, scryptLog2N == nil else {
                    throw commandFailure(program, "--tpm2 adds a TPM keyslot: leave out --new-key-file and --scrypt-log2n", status: usageExitCode)
                }
                print(try tpm2.enrol(options: options))
                return
            }
            guard options.control == nil else {
                throw commandFailure(program, "a passphrase keyslot is added offline; --control takes --tpm2", status: usageExitCode)
            }
            let pool = try options.openPool()
            let passphrase: [UInt8]
            do {
                passphrase = try newKeyFile.map { try SecretInput.keyFile($0) } ?? SecretInput.prompt("New passphrase: ")
            } catch let error as SecretInputError {
                throw commandFailure(program, error.description)
            }
            let cost = scryptLog2N.map { ScryptCost(log2N: $0) } ?? .tune()
            guard cost.isWithinBounds else { throw commandFailure(program, "--scrypt-log2n out of bounds", status: usageExitCode) }
            do {
                let slot = try pool.addKeyslot(.passphrase(passphrase), cost: cost)
                print("Added passphrase keyslot \(slot).")
            } catch {
                throw commandFailure(program, "\(error)")
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Wipe a keyslot (the last one is refused).")
        @OptionGroup var options: PoolOptions
        @Argument(help: "The keyslot number.") var slot: UInt32?

        func run() throws {
            let (options, operand) = try options.withOperand(slot.map(String.init))
            guard let slot = UInt32(operand) else { throw commandFailure(program, "bad keyslot number \"\(operand)\"", status: usageExitCode) }
            if let address = try options.controlAddress() {
                print(try options.ask(ControlRequest(operation: .keyslotRemove, slot: slot), at: address).message ?? "Removed keyslot \(slot).")
                return
            }
            let pool = try options.openPool()
            do { try pool.removeKeyslot(slot) } catch { throw commandFailure(program, "\(error)") }
            print("Removed keyslot \(slot).")
        }
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Read and authenticate every block of every volume.")
    @OptionGroup var options: PoolOptions

    func run() throws {
        guard options.control == nil else { throw commandFailure(program, "verify works offline: leave out --control", status: usageExitCode) }
        let pool = try options.openPool()
        let start = Date()
        let report = pool.verify { done, total, name in
            let width = 30
            let filled = total == 0 ? width : done * width / total
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardError.write(Data("\r[\(bar)] \(done)/\(total) \(name)".utf8))
        }
        FileHandle.standardError.write(Data("\n".utf8))
        for failure in report.failures { print("FAILED: \(failure)") }
        let seconds = String(format: "%.1f", Date().timeIntervalSince(start))
        print("Verified \(report.volumesChecked) volumes, \(report.dataBlocksChecked) blocks in \(seconds) s: \(report.failures.count) integrity failures.")
        if !report.failures.isEmpty { throw ExitCode(2) }
    }
}
