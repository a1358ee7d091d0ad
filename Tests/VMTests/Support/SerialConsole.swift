import Foundation

/// The guest's serial port, as qemu's Unix socket chardev (server, waiting
/// for this connection before the guest starts): a thread copies what the
/// guest writes into `text` and the console log file; `type` sends input,
/// as keys typed on the console.
final class SerialConsole: @unchecked Sendable {
    private let fd: Int32
    private let logPath: String
    // Guarded by `lock`: everything the guest wrote so far.
    private let lock = NSLock()
    private var received = Data()

    /// Connects to `socket`, waiting at most `seconds` for qemu to create it.
    init(socket: String, logPath: String, seconds: Double) throws {
        self.logPath = logPath
        guard FileManager.default.createFile(atPath: logPath, contents: nil) else { throw VMTestError("cannot create \(logPath)") }
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let fd = socket.withCString { Self.connectUnix($0) }
            if fd >= 0 {
                self.fd = fd
                break
            }
            guard Date() < deadline else { throw VMTestError("cannot connect to qemu's serial socket \(socket) within \(Int(seconds)) s") }
            usleep(20_000)
        }
        Thread.detachNewThread { [self] in readUntilClosed() }
    }

    deinit { close(fd) }

    var text: String { lock.withLock { String(decoding: received, as: UTF8.self) } }

    func type(_ text: String) {
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            // SAFETY: the pointer covers bytes[done...], which `bytes` owns.
            let sent = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { return }
            done += sent
        }
    }

    private func readUntilClosed() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let log = FileHandle(forWritingAtPath: logPath)
        defer { try? log?.close() }
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            let chunk = Data(buffer[0..<count])
            lock.withLock { received.append(chunk) }
            try? log?.write(contentsOf: chunk)
        }
    }

    private static func connectUnix(_ path: UnsafePointer<CChar>) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return -1 }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let length = strlen(path)
        guard length < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            return -1
        }
        // SAFETY: sun_path is longer than the path (checked above); the rest stays zero.
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyMemory(from: UnsafeRawBufferPointer(start: path, count: length)) }
        let result = withUnsafePointer(to: &address) {
            // SAFETY: sockaddr_un is layout-compatible with sockaddr for connect.
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            close(fd)
            return -1
        }
        return fd
    }
}
