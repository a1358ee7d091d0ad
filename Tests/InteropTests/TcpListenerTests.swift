import Foundation
import Testing

/// `--listen tcp:HOST:PORT` next to the Unix socket: the same exports over loopback TCP.
@Suite("TCP listener") struct TcpListenerTests {
    @Test("an export written over TCP reads back over the Unix socket")
    func tcpAndUnixServeTheSameExport() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let disk = Export(name: "disk", path: scratch.file("disk.img"))
        try makeSparseFile(disk.path, size: 8 * mebibyte)
        let (server, port) = try Self.startOnFreePort(exports: [disk], in: scratch)
        defer { server.stop() }

        let tcp = "nbd://127.0.0.1:\(port)/disk"
        server.expectSuccess(try run(["qemu-io", "-f", "raw", "-c", "write -P 0x3c 1M 256k", tcp]))
        server.expectSuccess(try run(["qemu-io", "-f", "raw", "-c", "read -P 0x3c 1M 256k", server.uri("disk")]))
        let size = try run(["nbdinfo", "--size", tcp])
        server.expectSuccess(size)
        #expect(size.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == String(8 * mebibyte))
    }

    /// Starts the server on a random loopback port, trying another port if that one is taken.
    private static func startOnFreePort(exports: [Export], in scratch: Scratch) throws -> (StorageServer, Int) {
        var lastError: (any Error)?
        for _ in 0..<8 {
            let port = Int.random(in: 20_000..<60_000)
            do {
                let server = try StorageServer(exports: exports, in: scratch, extraArguments: ["--listen", "tcp:127.0.0.1:\(port)"])
                return (server, port)
            } catch InteropError.serverExited(let command, let status, let log) where log.contains("in use") {
                lastError = InteropError.serverExited(command: command, status: status, log: log)
            }
        }
        throw lastError ?? InteropError.setupFailed("no free TCP port found")
    }
}
