import Foundation
import Sockets
import TestSupport
import Threads

/// A TCP proxy between the swtpm TCTI and swtpm that records every byte of
/// the TPM command channel, in both directions: what anyone able to watch
/// the TPM transport would see. Forwards the data port P and the control
/// port P+1 to the TPM's pair.
final class CapturingProxy: Sendable {
    let port: UInt16
    private let listeners: [Listener]
    private let connections = Locked<[Socket]>([])
    /// Bytes sent to the TPM's command port, in order.
    let commands = Locked<[UInt8]>([])
    /// Bytes the TPM's command port answered, in order.
    let responses = Locked<[UInt8]>([])

    var tcti: String { "swtpm:host=127.0.0.1,port=\(port)" }

    init(forwardingTo target: UInt16) throws {
        var bound: (UInt16, [Listener])?
        for _ in 0..<20 where bound == nil {
            let port = try freePortPair()
            guard let data = try? Listener(binding: .tcp(host: "127.0.0.1", port: port)),
                let control = try? Listener(binding: .tcp(host: "127.0.0.1", port: port + 1))
            else { continue }
            bound = (port, [data, control])
        }
        guard let bound else { throw TestFailure("no free port pair for the proxy") }
        (port, listeners) = bound
        accept(on: listeners[0], forwardTo: target, record: true)
        accept(on: listeners[1], forwardTo: target + 1, record: false)
    }

    deinit { stop() }

    /// Everything captured on the command channel, both directions.
    var captured: [UInt8] { commands.value + responses.value }

    func stop() {
        for listener in listeners { listener.close() }
        for socket in connections.value { socket.shutdown() }
    }

    private func accept(on listener: Listener, forwardTo target: UInt16, record: Bool) {
        startThread { [self] in
            while let client = try? listener.accept() {
                guard let server = try? Socket.connect(to: .tcp(host: "127.0.0.1", port: target)) else {
                    client.shutdown()
                    continue
                }
                connections.withLock { $0 += [client, server] }
                pump(from: client, to: server, into: record ? commands : nil)
                pump(from: server, to: client, into: record ? responses : nil)
            }
        }
    }

    private func pump(from source: Socket, to destination: Socket, into capture: Locked<[UInt8]>?) {
        startThread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { raw in (try? source.read(into: raw)) ?? 0 }
                if count == 0 { break }
                let chunk = Array(buffer.prefix(count))
                capture?.withLock { $0 += chunk }
                if (try? destination.writeAll(chunk)) == nil { break }
            }
            source.shutdown()
            destination.shutdown()
        }
    }
}
