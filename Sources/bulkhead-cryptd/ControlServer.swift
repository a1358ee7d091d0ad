import CryptPool
import DaemonSupport
import Foundation
import Keys
import Logging
import PoolFormat
import Sockets
import Synchronization
import TPM
import Threads

/// The control socket (docs/control.md): the toolstack's administration of
/// the served pool, done here where the master key is. Only root and the
/// allowed uids (SO_PEERCRED) are answered; requests run one at a time.
final class ControlServer: Sendable {
    let pool: Pool
    let volumes: VolumeServers
    let tpm: TPMConnection
    let allowedUIDs: Set<UInt32>
    let logger: Logger
    let listener: Listener
    /// Serialises requests: administration is rare and each one is a commit.
    private let busy = Mutex(())

    init(
        address: SocketAddress, pool: Pool, volumes: VolumeServers, tpm: TPMConnection, allowedUIDs: Set<UInt32>, logger: Logger
    ) throws {
        self.pool = pool
        self.volumes = volumes
        self.tpm = tpm
        self.allowedUIDs = allowedUIDs.union([0])
        self.logger = logger
        listener = try Listener(binding: address, permissions: 0o600)
    }

    func start() {
        startThread { [self] in
            while let connection = try? listener.accept() {
                startThread { [self] in handle(connection) }
            }
        }
    }

    func stop() {
        listener.close()
        if case .unix(let path) = listener.address { unlink(path) }
    }

    private func handle(_ connection: Socket) {
        defer { connection.shutdown() }
        guard let peer = connection.peerCredentials(), allowedUIDs.contains(peer.uid) else {
            logger.warning("control: refused a peer", metadata: ["uid": "\(connection.peerCredentials()?.uid.description ?? "unknown")"])
            return
        }
        connection.setTimeout(seconds: ControlProtocol.ioTimeout)
        let response: ControlResponse
        do {
            let request = try ControlProtocol.receive(ControlRequest.self, from: connection, limit: ControlProtocol.maxRequestLength)
            response = busy.withLock { _ in answer(request) }
            logger.info(
                "control request", metadata: ["operation": "\(request.operation.rawValue)", "uid": "\(peer.uid)", "ok": "\(response.ok)"])
        } catch {
            response = .failure("\(error)")
        }
        try? ControlProtocol.send(response, on: connection, limit: ControlProtocol.maxResponseLength)
    }

    /// Validates a request and carries it out.
    func answer(_ request: ControlRequest) -> ControlResponse {
        guard request.version == ControlProtocol.version else {
            return .failure("control protocol version \(request.version) is not \(ControlProtocol.version)")
        }
        let fields: [(String, Bool)] = [
            ("name", request.name != nil), ("size", request.size != nil), ("slot", request.slot != nil),
            ("pcrs", request.pcrs != nil), ("pcrValues", request.pcrValues != nil), ("pin", request.pin != nil),
        ]
        let allowed: Set<String> =
            switch request.operation {
            case .status: []
            case .keyslotAddTPM2: ["pcrs", "pcrValues", "pin"]
            case .keyslotRemove: ["slot"]
            case .volumeCreate: ["name", "size"]
            case .volumeDelete: ["name"]
            }
        for (field, present) in fields where present && !allowed.contains(field) {
            return .failure("\(request.operation.rawValue) takes no \(field)")
        }
        do {
            switch request.operation {
            case .status:
                return .success(status: status())
            case .keyslotAddTPM2:
                return .success(try addTPM2Keyslot(request))
            case .keyslotRemove:
                guard let slot = request.slot else { return .failure("keyslot-remove needs a slot") }
                try pool.removeKeyslot(slot)
                return .success("Removed keyslot \(slot).")
            case .volumeCreate:
                guard let name = request.name, let size = request.size else { return .failure("volume-create needs a name and a size") }
                let info = try pool.createVolume(name: name, size: size)
                do { try volumes.serve(info.name) } catch {
                    return .failure("created volume \(info.name) but cannot serve it: \(error)")
                }
                return .success("Created volume \(info.name) (\(info.size) bytes), served on \(volumes.socketPath(info.name)).")
            case .volumeDelete:
                guard let name = request.name else { return .failure("volume-delete needs a name") }
                guard pool.volumes.contains(where: { $0.name == name }) else { throw PoolError.noSuchVolume(name) }
                volumes.stop(name)
                try pool.deleteVolume(name: name)
                return .success("Deleted volume \(name).")
            }
        } catch {
            return .failure("\(error)")
        }
    }

    func status() -> ControlStatus {
        let summary = pool.summary()
        let served = volumes.served
        return ControlStatus(
            poolID: summary.poolID, generation: summary.generation, anchorEpoch: pool.anchorEpoch, blockCount: summary.blockCount,
            freeBlocks: summary.freeBlocks,
            keyslots: summary.keyslots.map { slot in
                let info = slot.sealedObject.flatMap { TPMKeyslotInfo(extra: $0) }
                return ControlStatus.Keyslot(slot: slot.slot, type: slot.type.description, pcrs: info?.pcrs, pin: info?.requiresPIN)
            },
            volumes: summary.volumes.map { ControlStatus.Volume(name: $0.name, size: $0.size, served: served.contains($0.name)) })
    }

    /// Seals the in-memory master key in this crypt domain's TPM.
    private func addTPM2Keyslot(_ request: ControlRequest) throws -> String {
        var predicted: [Int: [UInt8]] = [:]
        for (key, value) in request.pcrValues ?? [:] {
            guard let index = Int(key), (0..<PCRSelection.count).contains(index), let bytes = Hex.decode(value), bytes.count == 32 else {
                throw ControlError.malformed("PCR value \(key)=\(value.prefix(80)): expected a PCR 0...23 and 64 hex digits")
            }
            predicted[index] = bytes
        }
        let pcrs = request.pcrs ?? []
        guard pcrs.count <= PCRSelection.count else { throw ControlError.malformed("\(pcrs.count) PCRs") }
        var pin: SecretBytes?
        if let text = request.pin {
            guard var bytes = Hex.decode(text), !bytes.isEmpty, bytes.count <= SecretInput.maxKeyFileSize else {
                throw ControlError.malformed("the PIN must be 1 to \(SecretInput.maxKeyFileSize) bytes in hex")
            }
            pin = .taking(&bytes)
        }
        let context = try tpm.context()
        let values = try context.sealingValues(pcrs: pcrs, predicted: predicted)
        let slot = try pool.addTPM2Keyslot(sealObject: context.keyslotSealer(pcrValues: values, pin: pin))
        let selection = try PCRSelection(values.keys)
        return "Added tpm2 keyslot \(slot) sealed to PCRs \(selection)\(pin == nil ? "" : " and a PIN")."
    }
}

/// The crypt domain's TPM, opened at first need and kept.
final class TPMConnection: Sendable {
    let tcti: String
    private let opened = Mutex<TPMContext?>(nil)

    init(tcti: String) { self.tcti = tcti }

    func context() throws(TPMError) -> TPMContext {
        try opened.withLock { (current) throws(TPMError) -> TPMContext in
            if let current { return current }
            let context = try TPMContext(tcti: tcti)
            current = context
            return context
        }
    }
}
