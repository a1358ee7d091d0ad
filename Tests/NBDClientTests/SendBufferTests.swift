import Foundation
import Sockets
import TestSupport
import Testing

/// Unix sockets, both ends, ask for a send buffer that holds a whole 1 MiB
/// payload, so a large WRITE or READ reply leaves without lockstep.
@Suite("Unix socket send buffers")
struct SendBufferTests {
    /// What the kernel grants: twice the request with CAP_NET_ADMIN
    /// (SO_SNDBUFFORCE), else twice `net.core.wmem_max` at most.
    static var expected: Int {
        let asked = Int(Socket.unixSendBufferBytes)
        if geteuid() == 0 { return 2 * asked }
        let limit = (try? String(contentsOfFile: "/proc/sys/net/core/wmem_max", encoding: .utf8))
            .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
        return 2 * min(asked, limit)
    }

    /// Both ends of a fresh Unix socket connection.
    static func connectedPair() throws -> (client: Socket, server: Socket) {
        let directory = try TemporaryDirectory()
        let listener = try Listener(binding: .unix(path: directory.file("sock")))
        defer { listener.close() }
        let client = try Socket.connect(to: listener.address)
        return (client, try listener.accept())
    }

    @Test func connectedAndAcceptedUnixSocketsGetTheLargeSendBuffer() throws {
        let (client, server) = try Self.connectedPair()
        #expect(client.sendBufferBytes >= Self.expected)
        #expect(server.sendBufferBytes >= Self.expected)
        // Past the old default (208 KiB, doubled by the kernel) wherever the limits allow it.
        if Self.expected > 2 * 212_992 {
            #expect(client.sendBufferBytes > 2 * 212_992)
        }
    }

    @Test func aWholeMebibyteLeavesWithoutTheReaderReading() throws {
        let (client, server) = try Self.connectedPair()
        guard Self.expected >= 2 * Int(Socket.unixSendBufferBytes) else { return }
        let payload = [UInt8](repeating: 0xA5, count: 1 << 20)
        // Nobody reads `server` yet: a default buffer would take about 200 KiB.
        var sent = 0
        while sent < payload.count {
            let count = try payload.withUnsafeBytes { try client.writeAvailable(UnsafeRawBufferPointer(rebasing: $0[sent...])) }
            if count == 0 { break }
            sent += count
        }
        #expect(sent == payload.count)
        var received = [UInt8](repeating: 0, count: payload.count)
        try received.withUnsafeMutableBytes { try server.readExactly(into: $0) }
        #expect(received == payload)
    }
}
