import Foundation
import Sockets

/// The crypt domain's control protocol (docs/control.md): how `bulkhead`
/// asks a running `bulkhead-cryptd` to do administration that needs the
/// master key, so the toolstack never holds it. One request and one
/// response per connection, each a 4-byte big-endian length then that many
/// bytes of JSON, both bounded.
public enum ControlProtocol {
    /// The protocol version requests carry; others are refused.
    public static let version = 1
    /// Largest request body.
    public static let maxRequestLength = 16 * 1024
    /// Largest response body.
    public static let maxResponseLength = 256 * 1024
    /// How long either side waits for the other's bytes.
    public static let ioTimeout = 10.0

    /// Writes one framed message.
    public static func send(_ message: some Encodable, on socket: Socket, limit: Int) throws(ControlError) {
        let body: Data
        do { body = try JSONEncoder().encode(message) } catch { throw .malformed("cannot encode: \(error)") }
        guard body.count <= limit else { throw .tooLarge(body.count, limit: limit) }
        var frame: [UInt8] = []
        frame.reserveCapacity(4 + body.count)
        for shift in stride(from: 24, through: 0, by: -8) { frame.append(UInt8(truncatingIfNeeded: body.count >> shift)) }
        frame += body
        do { try socket.writeAll(frame) } catch { throw .transport("\(error)") }
    }

    /// Reads one framed message, refusing lengths above `limit` before
    /// allocating for them.
    public static func receive<T: Decodable>(_ type: T.Type, from socket: Socket, limit: Int) throws(ControlError) -> T {
        var header = [UInt8](repeating: 0, count: 4)
        try readExactly(&header, from: socket)
        let length = header.reduce(0) { $0 << 8 | Int($1) }
        guard length > 0, length <= limit else { throw .tooLarge(length, limit: limit) }
        var body = [UInt8](repeating: 0, count: length)
        try readExactly(&body, from: socket)
        do { return try JSONDecoder().decode(T.self, from: Data(body)) } catch {
            throw .malformed("undecodable message: \(error)")
        }
    }

    private static func readExactly(_ bytes: inout [UInt8], from socket: Socket) throws(ControlError) {
        var failure: SocketError?
        bytes.withUnsafeMutableBytes { raw in
            do throws(SocketError) { try socket.readExactly(into: raw) } catch { failure = error }
        }
        if let failure { throw .transport("\(failure)") }
    }
}

/// What went wrong on a control connection.
public enum ControlError: Error, Sendable, Equatable, CustomStringConvertible {
    case transport(String)
    case tooLarge(Int, limit: Int)
    case malformed(String)
    /// The crypt domain refused or failed the request.
    case refused(String)

    public var description: String {
        switch self {
        case .transport(let why): "control connection: \(why)"
        case .tooLarge(let length, let limit): "control message of \(length) bytes (1...\(limit))"
        case .malformed(let why): "control message: \(why)"
        case .refused(let why): why
        }
    }
}

/// A control request. Fields other than those of `operation` must be absent.
public struct ControlRequest: Codable, Sendable, Equatable {
    public enum Operation: String, Codable, Sendable {
        /// The pool's structure, keyslots and volumes (never key material).
        case status
        /// Seal the master key in the crypt domain's TPM into a new keyslot.
        case keyslotAddTPM2 = "keyslot-add-tpm2"
        /// Wipe a keyslot (the last one is refused).
        case keyslotRemove = "keyslot-remove"
        /// Create a volume and start serving it.
        case volumeCreate = "volume-create"
        /// Stop serving a volume and delete it.
        case volumeDelete = "volume-delete"
    }

    public var version: Int
    public var operation: Operation
    /// volume-create, volume-delete: the volume's name.
    public var name: String?
    /// volume-create: its size in bytes.
    public var size: UInt64?
    /// keyslot-remove: the slot.
    public var slot: UInt32?
    /// keyslot-add-tpm2: PCRs sealed to at their current values.
    public var pcrs: [Int]?
    /// keyslot-add-tpm2: PCR index (decimal) to predicted SHA-256 value (64 hex digits).
    public var pcrValues: [String: String]?
    /// keyslot-add-tpm2: the PIN's bytes in hex, if the slot needs one.
    public var pin: String?

    public init(
        operation: Operation, name: String? = nil, size: UInt64? = nil, slot: UInt32? = nil, pcrs: [Int]? = nil,
        pcrValues: [String: String]? = nil, pin: String? = nil
    ) {
        version = ControlProtocol.version
        self.operation = operation
        self.name = name
        self.size = size
        self.slot = slot
        self.pcrs = pcrs
        self.pcrValues = pcrValues
        self.pin = pin
    }
}

/// A control response: `ok` with what the operation returns, or an error.
public struct ControlResponse: Codable, Sendable, Equatable {
    public var ok: Bool
    public var error: String?
    /// A one-line account of what was done ("Added tpm2 keyslot 2.").
    public var message: String?
    public var status: ControlStatus?

    public static func failure(_ error: String) -> ControlResponse { ControlResponse(ok: false, error: error) }
    public static func success(_ message: String? = nil, status: ControlStatus? = nil) -> ControlResponse {
        ControlResponse(ok: true, message: message, status: status)
    }
}

/// What `status` reports.
public struct ControlStatus: Codable, Sendable, Equatable {
    public struct Keyslot: Codable, Sendable, Equatable {
        public var slot: UInt32
        public var type: String
        /// tpm2: the PCRs sealed to and whether a PIN is needed.
        public var pcrs: [Int]?
        public var pin: Bool?

        public init(slot: UInt32, type: String, pcrs: [Int]? = nil, pin: Bool? = nil) {
            self.slot = slot
            self.type = type
            self.pcrs = pcrs
            self.pin = pin
        }
    }

    public struct Volume: Codable, Sendable, Equatable {
        public var name: String
        public var size: UInt64
        public var served: Bool

        public init(name: String, size: UInt64, served: Bool) {
            self.name = name
            self.size = size
            self.served = served
        }
    }

    public var poolID: String
    public var generation: UInt64
    public var anchorEpoch: UInt64
    public var blockCount: UInt64
    public var freeBlocks: UInt64
    public var keyslots: [Keyslot]
    public var volumes: [Volume]

    public init(
        poolID: String, generation: UInt64, anchorEpoch: UInt64, blockCount: UInt64, freeBlocks: UInt64, keyslots: [Keyslot],
        volumes: [Volume]
    ) {
        self.poolID = poolID
        self.generation = generation
        self.anchorEpoch = anchorEpoch
        self.blockCount = blockCount
        self.freeBlocks = freeBlocks
        self.keyslots = keyslots
        self.volumes = volumes
    }
}

extension ControlProtocol {
    /// Sends `request` to the crypt domain at `address` and returns its
    /// response; a refusal becomes `.refused` with the crypt domain's reason.
    public static func exchange(_ request: ControlRequest, with address: SocketAddress) throws(ControlError) -> ControlResponse {
        let socket: Socket
        do { socket = try Socket.connect(to: address) } catch { throw .transport("\(error)") }
        defer { socket.shutdown() }
        // Sealing in a TPM takes seconds; the answer may take longer than one read.
        socket.setTimeout(seconds: 120)
        try send(request, on: socket, limit: maxRequestLength)
        let response = try receive(ControlResponse.self, from: socket, limit: maxResponseLength)
        guard response.ok else { throw .refused(response.error ?? "refused without a reason") }
        return response
    }
}

/// Hex encoding for control fields.
public enum Hex {
    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    /// Decodes an even number of hex digits; nil for anything else.
    public static func decode(_ text: String) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = value(digits[index]), let low = value(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func value(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
