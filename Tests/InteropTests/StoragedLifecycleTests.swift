import Foundation
import Testing

/// The `bulkhead-storaged` command line contract: clean exit on SIGTERM, one-line errors on bad arguments.
@Suite("bulkhead-storaged process") struct StoragedLifecycleTests {
    @Test("SIGTERM stops bulkhead-storaged with status 0 and removes its socket")
    func stopsCleanlyOnSIGTERM() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let disk = Export(name: "disk", path: scratch.file("disk.img"))
        try makeSparseFile(disk.path, size: mebibyte)
        let server = try StorageServer(exports: [disk], in: scratch)
        defer { server.stop() }
        // A client connected at the time of the signal must not keep the server alive.
        let probe = try run(["nbdinfo", "--size", server.uri("disk")])
        server.expectSuccess(probe)

        let (status, killed) = server.stop()
        #expect(!killed, "the server ignored SIGTERM for 10 s and was killed")
        #expect(status == 0, "exit status after SIGTERM; log:\n\(tail(server.log))")
        #expect(!FileManager.default.fileExists(atPath: server.socketPath), "the socket file is still there")
    }

    @Test("bad arguments: a non-zero exit and a one-line error naming the problem", arguments: [
        (["--export", "disk=/nonexistent/bulkhead/disk.img"], "/nonexistent/bulkhead/disk.img"),
        (["--export", "twin=IMAGE", "--export", "twin=IMAGE"], "twin"),
        (["--export", "no-equals-sign"], "no-equals-sign"),
        (["--listen", "carrier-pigeon:1", "--export", "disk=IMAGE"], "carrier-pigeon:1"),
    ])
    func rejectsBadArguments(arguments: [String], mentioned: String) throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let image = scratch.file("disk.img")
        try makeSparseFile(image, size: mebibyte)
        let socket = scratch.file("nbd.sock")
        var command = [try StorageServer.storagedPath()]
        if !arguments.contains("--listen") { command += ["--listen", "unix:" + socket] }
        command += arguments.map { $0.replacingOccurrences(of: "IMAGE", with: image) }

        let result = try run(command, timeout: 30)
        #expect(result.status != 0, "\(result)")
        let lines = result.stderr.split(separator: "\n", omittingEmptySubsequences: true)
        #expect(lines.count == 1, "expected a one-line error: \(result)")
        #expect(result.stderr.contains(mentioned), "the error should name \(mentioned): \(result)")
        #expect(!FileManager.default.fileExists(atPath: socket), "a failed start left its socket behind")
    }
}
