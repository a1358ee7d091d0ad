import Foundation
import Sockets

/// What a server answered to NBD_OPT_GO for one export name.
enum GoOutcome: Equatable, CustomStringConvertible {
    /// NBD_REP_ACK: the export opened; its size from NBD_INFO_EXPORT.
    case opened(size: UInt64?)
    /// An NBD_REP_ERR_* reply (the type with its error bit) and the message.
    case refused(replyType: UInt32, message: String)

    var description: String {
        switch self {
        case .opened(let size): "opened (size \(size.map(String.init) ?? "not sent"))"
        case .refused(let type, let message): "refused with reply type 0x\(String(type, radix: 16)) \"\(message)\""
        }
    }
}

/// A hand-written NBD client for the one exchange the stock tools do not
/// expose: the fixed-newstyle handshake with NBD_OPT_GO for a chosen export
/// name (proto.md, "Option types"), then NBD_CMD_DISC. Independent of the
/// package's own protocol code, so it checks the server against the spec.
/// Every read is bounded by `timeout`.
enum HandshakeProbe {
    static let nbdMagic: UInt64 = 0x4E42_444D_4147_4943  // "NBDMAGIC"
    static let optionMagic: UInt64 = 0x4948_4156_454F_5054  // "IHAVEOPT"
    static let replyMagic: UInt64 = 0x0003_E889_0455_65A9
    static let requestMagic: UInt32 = 0x2560_9513
    static let optGo: UInt32 = 7
    static let repAck: UInt32 = 1
    static let repInfo: UInt32 = 3
    static let repErrUnknown: UInt32 = 0x8000_0006
    static let infoExport: UInt16 = 0
    static let cmdDisc: UInt16 = 2

    /// Connects to the Unix socket `path` and asks for `export` with NBD_OPT_GO.
    static func go(socket path: String, export: String, timeout: Double = 10) throws -> GoOutcome {
        let socket = try Socket.connect(to: .unix(path: path))
        socket.setTimeout(seconds: timeout)
        defer { socket.shutdown() }

        var greeting = Reader(try read(socket, 18))
        guard greeting.u64() == nbdMagic, greeting.u64() == optionMagic else {
            throw ChainError.setup("\(path): not a fixed-newstyle NBD greeting")
        }
        let serverFlags = greeting.u16()
        guard serverFlags & 1 == 1 else { throw ChainError.setup("\(path): server lacks NBD_FLAG_FIXED_NEWSTYLE") }
        // NBD_FLAG_C_FIXED_NEWSTYLE, plus NBD_FLAG_C_NO_ZEROES when offered.
        var out = Writer()
        out.u32(serverFlags & 2 == 2 ? 3 : 1)
        let name = Array(export.utf8)
        out.u64(optionMagic)
        out.u32(optGo)
        out.u32(UInt32(4 + name.count + 2))
        out.u32(UInt32(name.count))
        out.bytes(name)
        out.u16(0)  // no information requests
        try socket.writeAll(out.data)

        var size: UInt64?
        for _ in 0..<64 {
            var header = Reader(try read(socket, 20))
            guard header.u64() == replyMagic else { throw ChainError.setup("\(path): bad option reply magic") }
            guard header.u32() == optGo else { throw ChainError.setup("\(path): reply to an option not sent") }
            let type = header.u32()
            let length = Int(header.u32())
            guard length <= 1 << 16 else { throw ChainError.setup("\(path): option reply of \(length) bytes") }
            var payload = Reader(try read(socket, length))
            if type & 0x8000_0000 != 0 {
                return .refused(replyType: type, message: String(decoding: payload.rest(), as: UTF8.self))
            }
            if type == repInfo, length >= 12, payload.u16() == infoExport { size = payload.u64() }
            if type == repAck {
                // Transmission phase: leave politely with NBD_CMD_DISC.
                var disc = Writer()
                disc.u32(requestMagic)
                disc.u16(0)
                disc.u16(cmdDisc)
                disc.u64(1)
                disc.u64(0)
                disc.u32(0)
                try? socket.writeAll(disc.data)
                return .opened(size: size)
            }
        }
        throw ChainError.setup("\(path): no NBD_REP_ACK after 64 replies")
    }

    private static func read(_ socket: Socket, _ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var failure: SocketError?
        bytes.withUnsafeMutableBytes { raw in
            do throws(SocketError) { try socket.readExactly(into: raw) } catch { failure = error }
        }
        if let failure { throw failure }
        return bytes
    }

    private struct Reader {
        let bytes: [UInt8]
        var at = 0
        init(_ bytes: [UInt8]) { self.bytes = bytes }
        mutating func big(_ count: Int) -> UInt64 {
            defer { at += count }
            return bytes[at..<(at + count)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        mutating func u64() -> UInt64 { big(8) }
        mutating func u32() -> UInt32 { UInt32(big(4)) }
        mutating func u16() -> UInt16 { UInt16(big(2)) }
        func rest() -> ArraySlice<UInt8> { bytes[at...] }
    }

    private struct Writer {
        var data: [UInt8] = []
        mutating func big(_ value: UInt64, _ count: Int) {
            for shift in stride(from: (count - 1) * 8, through: 0, by: -8) { data.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
        }
        mutating func u64(_ value: UInt64) { big(value, 8) }
        mutating func u32(_ value: UInt32) { big(UInt64(value), 4) }
        mutating func u16(_ value: UInt16) { big(UInt64(value), 2) }
        mutating func bytes(_ more: [UInt8]) { data += more }
    }
}
