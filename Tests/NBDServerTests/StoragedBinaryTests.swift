import BlockDevice
import Glibc
import NBDServer
import Sockets
import TestSupport
import Testing

/// The built `bulkhead-storaged`, next to the test bundle in `.build/<config>/`.
func storagedBinary() throws -> String {
    var buffer = [UInt8](repeating: 0, count: 4096)
    let count = buffer.withUnsafeMutableBufferPointer { raw in
        raw.withMemoryRebound(to: CChar.self) { readlink("/proc/self/exe", $0.baseAddress!, $0.count) }
    }
    guard count > 0 else { throw ClientFailure("cannot read /proc/self/exe") }
    var directory = String(decoding: buffer[..<count], as: UTF8.self)
    // The runner is `.build/<config>/<Package>PackageTests.xctest`, possibly
    // inside a bundle directory on other layouts.
    while !directory.isEmpty, !directory.hasSuffix(".xctest") {
        directory = String(directory[..<(directory.lastIndex(of: "/") ?? directory.startIndex)])
    }
    directory = String(directory[..<(directory.lastIndex(of: "/") ?? directory.startIndex)])
    let path = "\(directory)/bulkhead-storaged"
    guard access(path, X_OK) == 0 else {
        throw ClientFailure("\(path) is missing: build it first with `swift build --product bulkhead-storaged`")
    }
    return path
}

/// A child process whose stderr goes to a file.
final class ChildProcess {
    let pid: pid_t
    let stderrPath: String
    private(set) var status: Int32?

    init(_ executable: String, _ arguments: [String], stderrPath: String) throws {
        self.stderrPath = stderrPath
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        let result = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        guard result == 0 else { throw ClientFailure("posix_spawn \(executable): \(String(cString: strerror(result)))") }
        self.pid = pid
    }

    /// Waits up to `timeout` seconds for the exit status (the code, or 128+signal).
    func wait(timeout: Double = 20) -> Int32? {
        if let status { return status }
        let deadline = monotonic() + timeout
        while monotonic() < deadline {
            var raw: Int32 = 0
            if waitpid(pid, &raw, WNOHANG) == pid {
                let exited = raw & 0x7f == 0
                status = exited ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
                return status
            }
            usleep(10_000)
        }
        return nil
    }

    var stderr: String {
        let fd = open(stderrPath, O_RDONLY)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    deinit {
        if status == nil {
            kill(pid, SIGKILL)
            _ = wait(timeout: 5)
        }
    }
}

@Suite("bulkhead-storaged")
struct StoragedBinaryTests {
    /// Runs the daemon with `arguments` and expects it to exit at once with
    /// `status` and exactly the one line `message` on stderr.
    func expectFailure(_ arguments: [String], status: Int32, message: String) throws {
        let directory = try TemporaryDirectory()
        let child = try ChildProcess(try storagedBinary(), arguments, stderrPath: "\(directory.path)/stderr")
        #expect(child.wait() == status, "\(arguments)")
        #expect(child.stderr == message + "\n")
    }

    @Test func missingFileIsOneLine() throws {
        try expectFailure(
            ["--listen", "unix:/tmp/bulkhead-unused.sock", "--export", "disk0=/nope.img"], status: 1,
            message: "bulkhead-storaged: cannot open export disk0: /nope.img: No such file or directory")
    }

    @Test func badSyntaxIsOneLine() throws {
        let directory = try TemporaryDirectory()
        let image = directory.file("a.img", size: 65536)
        try expectFailure(
            ["--listen", "udp:1.2.3.4:5", "--export", "a=\(image)"], status: 64,
            message: "bulkhead-storaged: bad --listen: bad address \"udp:1.2.3.4:5\": expected unix:PATH or tcp:HOST:PORT")
        try expectFailure(
            ["--listen", "tcp:127.0.0.1:99999", "--export", "a=\(image)"], status: 64,
            message: "bulkhead-storaged: bad --listen: bad address \"tcp:127.0.0.1:99999\": port must be a number from 0 to 65535")
        try expectFailure(
            ["--listen", "unix:\(directory.path)/s", "--export", "\(image)"], status: 64,
            message: "bulkhead-storaged: bad --export \"\(image)\": no \"=\"; expected NAME=PATH or NAME=PATH:ro")
        try expectFailure(
            ["--listen", "unix:\(directory.path)/s", "--export", "=\(image)"], status: 64,
            message: "bulkhead-storaged: bad --export \"=\(image)\": empty export name; expected NAME=PATH or NAME=PATH:ro")
        try expectFailure(
            ["--listen", "unix:\(directory.path)/s", "--export", "a=\(image)", "--export", "a=\(image):ro"], status: 64,
            message: "bulkhead-storaged: duplicate export name \"a\"")
        try expectFailure(
            ["--export", "a=\(image)"], status: 64, message: "bulkhead-storaged: at least one --listen address is required")
        try expectFailure(
            ["--listen", "unix:\(directory.path)/s"], status: 64, message: "bulkhead-storaged: at least one --export is required")
        #expect(access("\(directory.path)/s", F_OK) != 0)
    }

    @Test func busySocketIsOneLine() throws {
        let fixture = try TestServer()
        let directory = try TemporaryDirectory()
        let image = directory.file("a.img", size: 65536)
        try expectFailure(
            ["--listen", "\(fixture.address)", "--export", "a=\(image)"], status: 1,
            message: "bulkhead-storaged: \(fixture.address) is already in use by another server")
        // The running server is untouched.
        let client = try RawClient(fixture.address, export: "mem")
        #expect(try client.read(at: 0, length: 512).count == 512)
    }

    @Test func printsItsVersion() throws {
        let directory = try TemporaryDirectory()
        let child = try ChildProcess(try storagedBinary(), ["--version"], stderrPath: "\(directory.path)/stderr")
        #expect(child.wait() == 0)
    }

    @Test(arguments: [SIGTERM, SIGINT])
    func servesAndExitsCleanlyOnSignal(signal: Int32) throws {
        let directory = try TemporaryDirectory()
        let image = directory.file("disk.img", size: 1 << 20)
        let readOnlyImage = directory.file("ro.img", size: 65536)
        let socketPath = "\(directory.path)/storage.sock"
        let child = try ChildProcess(
            try storagedBinary(),
            [
                "--listen", "unix:\(socketPath)", "--export", "disk0=\(image)", "--export", "scratch=\(readOnlyImage):ro",
                "--log-level", "debug",
            ],
            stderrPath: "\(directory.path)/stderr")
        let address = SocketAddress.unix(path: socketPath)
        #expect(waitUntil { (try? Socket.connect(to: address)) != nil }, "daemon never listened: \(child.stderr)")
        // The first export answers the empty name.
        let client = try RawClient(address, export: "")
        #expect(client.session?.size == 1 << 20)
        try client.write(pattern(4096), at: 4096)
        #expect(try client.read(at: 4096, length: 4096) == pattern(4096))
        let readOnly = try RawClient(address, export: "scratch")
        #expect(readOnly.session?.flags.contains(.readOnly) == true)
        #expect(try readOnly.roundTrip(.write, length: 16, payload: pattern(16)).error == .permissionDenied)

        kill(child.pid, signal)
        #expect(child.wait() == 0, "\(child.stderr)")
        #expect(access(socketPath, F_OK) != 0)
        #expect(client.isClosedByServer())
        let log = child.stderr
        #expect(log.contains("shutting down"))
        #expect(!log.contains(" error bulkhead-storaged:") && !log.contains(" warning bulkhead-storaged:"))
    }

    /// Requests the page cache satisfies run on the connection's thread by
    /// default and on worker threads with --threaded: the same bytes either way.
    @Test(arguments: [[], ["--threaded"]])
    func servesPipelinedRequestsInlineOrThreaded(extra: [String]) throws {
        let directory = try TemporaryDirectory()
        let image = directory.file("disk.img", size: 1 << 20)
        let socketPath = "\(directory.path)/storage.sock"
        let child = try ChildProcess(
            try storagedBinary(), ["--listen", "unix:\(socketPath)", "--export", "disk0=\(image)"] + extra,
            stderrPath: "\(directory.path)/stderr")
        defer {
            kill(child.pid, SIGTERM)
            _ = child.wait()
        }
        let address = SocketAddress.unix(path: socketPath)
        #expect(waitUntil { (try? Socket.connect(to: address)) != nil }, "daemon never listened: \(child.stderr)")
        let client = try RawClient(address, export: "disk0")
        for index in 0..<16 {
            try client.write(pattern(4096, seed: index + 2), at: UInt64(index * 4096))
        }
        for index in 0..<16 {
            #expect(try client.read(at: UInt64(index * 4096), length: 4096) == pattern(4096, seed: index + 2))
        }
        #expect(try client.read(at: 0, length: 65536) == (0..<16).flatMap { pattern(4096, seed: $0 + 2) })
    }
}
