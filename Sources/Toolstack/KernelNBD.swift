#if canImport(Glibc)
import ProcessSpawn
import Glibc
#endif
import Foundation
import NBDProtocol
import Sockets

/// The kernel's NBD driver (`/dev/nbdN`) connected to one export of a Unix
/// socket (docs/boot.md, "Root attachment"): the toolstack does the
/// fixed-newstyle handshake with NBD_OPT_GO itself, gives the driver the
/// export's size and transmission flags (so the kernel sends FLUSH, FUA
/// and TRIM when the export offers them) and the connected socket, and a
/// thread of this process stays in NBD_DO_IT for as long as the device is
/// attached.
final class KernelNBDDevice: @unchecked Sendable {
    /// The driver's ioctls: _IO(0xab, n) (linux/nbd.h).
    private enum Request {
        static let setSocket: UInt = 0xab00
        static let setBlockSize: UInt = 0xab01
        static let doIt: UInt = 0xab03
        static let clearSocket: UInt = 0xab04
        static let clearQueue: UInt = 0xab05
        static let setSizeBlocks: UInt = 0xab07
        static let disconnect: UInt = 0xab08
        static let setFlags: UInt = 0xab0a
    }

    /// The logical block size the driver is given; volumes are multiples of it.
    static let blockSize: UInt64 = 4096
    /// Bound on the handshake and on the device coming up.
    static let attachSeconds = 30.0

    let path: String
    private let device: Int32
    private let connection: Socket
    // Guarded by `lock`: why NBD_DO_IT returned, once it has.
    private let lock = NSCondition()
    private var ended: String?

    /// Whether this machine has the kernel NBD driver (the `nbd` module loaded).
    static func available(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFBLK
    }

    /// Connects `device` to `export` on `socket`; returns once the block
    /// device has its size. `onDetach` is called (on the serving thread)
    /// with the reason when the device stops serving.
    static func attach(
        socket: String, export: String, device path: String, onDetach: @escaping @Sendable (String) -> Void
    ) throws(ToolstackError) -> KernelNBDDevice {
        let connection: Socket
        do { connection = try Socket.connect(to: .unix(path: socket)) } catch {
            throw ToolstackError("cannot connect to \(socket): \(error)")
        }
        let session: ClientSession
        do { session = try handshake(connection, export: export) } catch {
            connection.shutdown()
            throw error
        }
        guard session.size > 0, session.size % blockSize == 0 else {
            connection.shutdown()
            throw ToolstackError("export \(export) has size \(session.size), not a positive multiple of \(blockSize)")
        }
        // The driver does its own timing; a receive timeout left on the
        // socket would make its reads fail.
        connection.setTimeout(seconds: nil)
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            connection.shutdown()
            throw ToolstackError("cannot open \(path): \(systemMessage(errno))")
        }
        let steps: [(UInt, UInt, String)] = [
            (Request.setBlockSize, UInt(blockSize), "NBD_SET_BLKSIZE"),
            (Request.setSizeBlocks, UInt(session.size / blockSize), "NBD_SET_SIZE_BLOCKS"),
            (Request.setFlags, UInt(session.flags.rawValue), "NBD_SET_FLAGS"),
            (Request.setSocket, UInt(connection.fileDescriptor), "NBD_SET_SOCK"),
        ]
        for (request, argument, name) in steps where control(fd, request, argument) < 0 {
            let message = "\(name) on \(path): \(systemMessage(errno))"
            _ = control(fd, Request.clearSocket, 0)
            close(fd)
            connection.shutdown()
            throw ToolstackError(message)
        }
        let attached = KernelNBDDevice(path: path, device: fd, connection: connection)
        Thread.detachNewThread { attached.serve(onDetach) }
        try attached.waitForSize(session.size)
        return attached
    }

    private init(path: String, device: Int32, connection: Socket) {
        self.path = path
        self.device = device
        self.connection = connection
    }

    /// Runs NBD_DO_IT until the device is disconnected or the server goes away.
    private func serve(_ onDetach: @Sendable (String) -> Void) {
        let result = Self.control(device, Request.doIt, 0)
        let reason = result < 0 ? systemMessage(errno) : "disconnected"
        _ = Self.control(device, Request.clearQueue, 0)
        _ = Self.control(device, Request.clearSocket, 0)
        lock.withLock {
            ended = reason
            lock.broadcast()
        }
        onDetach(reason)
    }

    /// Waits until the kernel shows the device with its size, or NBD_DO_IT ended.
    private func waitForSize(_ size: UInt64) throws(ToolstackError) {
        let sizeFile = "/sys/block/\((path as NSString).lastPathComponent)/size"
        let deadline = monotonicNow() + Self.attachSeconds
        while true {
            if let reason = lock.withLock({ ended }) { throw ToolstackError("\(path) stopped serving at once: \(reason)") }
            let sectors = (try? String(contentsOfFile: sizeFile, encoding: .utf8)).flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            if let sectors, sectors * 512 == size { return }
            guard monotonicNow() < deadline else {
                detach()
                throw ToolstackError("\(path) did not come up within \(Int(Self.attachSeconds)) s")
            }
            usleep(20_000)
        }
    }

    /// Disconnects the device (after the file system on it is unmounted)
    /// and waits, bounded, for the serving thread to end.
    func detach() {
        _ = Self.control(device, Request.disconnect, 0)
        let deadline = Date().addingTimeInterval(10)
        lock.withLock {
            while ended == nil, lock.wait(until: deadline) {}
        }
        if lock.withLock({ ended }) == nil { connection.shutdown() }
    }

    /// The fixed-newstyle handshake, bounded by `attachSeconds`.
    private static func handshake(_ connection: Socket, export: String) throws(ToolstackError) -> ClientSession {
        var handshake = ClientHandshake(goal: .export(export, structuredReplies: false))
        let deadline = monotonicNow() + attachSeconds
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let remaining = deadline - monotonicNow()
            guard remaining > 0 else { throw ToolstackError("the NBD handshake for export \(export) timed out") }
            connection.setTimeout(seconds: remaining)
            let count: Int
            do { count = try buffer.withUnsafeMutableBytes { (bytes) throws(SocketError) in try connection.read(into: bytes) } } catch {
                throw ToolstackError("the NBD handshake for export \(export) failed: \(error)")
            }
            guard count > 0 else { throw ToolstackError("the server closed the connection during the handshake for export \(export)") }
            for event in handshake.receive(buffer[0..<count]) {
                switch event {
                case .send(let bytes):
                    do { try connection.writeAll(bytes) } catch { throw ToolstackError("the NBD handshake for export \(export) failed: \(error)") }
                case .ready(let session):
                    guard handshake.takeLeftover().isEmpty else { throw ToolstackError("the server sent data after the handshake") }
                    return session
                case .listed:
                    throw ToolstackError("the server listed exports instead of selecting \(export)")
                case .failed(let error):
                    throw ToolstackError("the server refused export \(export): \(error)")
                }
            }
        }
    }

    /// An ioctl whose argument is an unsigned long passed by value (Swift's
    /// Glibc offers only an Int32 or a pointer for the variadic argument).
    private static func control(_ fd: Int32, _ request: UInt, _ argument: UInt) -> Int32 {
        if let asPointer = UnsafeMutableRawPointer(bitPattern: argument) { return ioctl(fd, request, asPointer) }
        return ioctl(fd, request, Int32(0))
    }
}
