import NBDProtocol
import Sockets
import Threads

/// Drives `ClientHandshake` over a socket until it reaches its goal, within
/// an overall deadline: a server that stalls or trickles bytes cannot hold
/// the caller longer than `timeout` (plus one socket read).
enum HandshakeDriver {
    enum Outcome {
        case ready(ClientSession, leftover: [UInt8])
        case listed([ListedExport])
    }

    static func run(on socket: Socket, goal: ClientHandshake.Goal, timeout: Double) throws(NBDClientError) -> Outcome {
        var handshake = ClientHandshake(goal: goal)
        let deadline = monotonicSeconds() + timeout
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * 1024, alignment: 1)
        defer { buffer.deallocate() }
        while true {
            let remaining = deadline - monotonicSeconds()
            guard remaining > 0 else { throw .timedOut(.handshake) }
            // A zero timeout would mean none at all.
            socket.setTimeout(seconds: max(remaining, 0.001))
            let count: Int
            do throws(SocketError) {
                count = try socket.read(into: buffer)
            } catch .timedOut {
                throw .timedOut(.handshake)
            } catch {
                throw .connectionLost(error)
            }
            guard count > 0 else { throw .connectionLost(.connectionClosed) }
            for event in handshake.receive(UnsafeRawBufferPointer(rebasing: buffer[0..<count])) {
                switch event {
                case .send(let bytes):
                    do throws(SocketError) { try socket.writeAll(bytes) } catch .timedOut {
                        throw .timedOut(.handshake)
                    } catch {
                        throw .connectionLost(error)
                    }
                case .ready(let session):
                    return .ready(session, leftover: handshake.takeLeftover())
                case .listed(let exports):
                    return .listed(exports)
                case .failed(let error):
                    throw .handshake(error)
                }
            }
        }
    }
}
