import Foundation
import LaunchMeasurement
import Sockets
import Testing
import Toolstack

/// What each domain's sandbox lets it reach, probed from inside the same
/// sandbox configuration, and the seccomp allowlist's default action.
@Suite("Sandbox") struct SandboxTests {
    /// Runs `probe` (a shell command) as `role` would run: its user, its
    /// namespaces, its grants; without the seccomp filter, which a shell
    /// would not pass.
    func probe(_ role: DomainRole, _ fixture: BootFixture, _ command: String) throws -> ProcessLaunch.Outcome {
        let manifest = try fixture.manifest()
        var launch = manifest.launch(role)
        launch.arguments = ["/bin/sh", "-c", command]
        let identity = try launch.user.resolve(createIfMissing: false)
        var sandbox = try SandboxCommand(launch: launch, identity: identity, libraryDirectories: [])
        let seccomp = sandbox.argv.firstIndex(of: "--seccomp")!
        sandbox.argv.removeSubrange(seccomp...(seccomp + 1))
        let info = sandbox.argv.firstIndex(of: "--info-fd")!
        sandbox.argv.removeSubrange(info...(info + 1))
        return try run([sandbox.executable] + sandbox.argv.dropFirst(), timeout: 30)
    }

    /// A shell test of whether `path` can be opened for reading.
    func opens(_ path: String) -> String { "if cat '\(path)' > /dev/null 2>&1; then echo OPENED; else echo DENIED; fi" }

    @Test("the crypt domain cannot open the disk; the storage domain cannot reach the crypt state, the TPM or the network")
    func reach() throws {
        try requireBootPrivileges()
        let fixture = try BootFixture()
        try fixture.boot()  // prepares users, ownership and the runtime folder
        try fixture.stop()
        _ = try tool("python3", package: "python3")

        // Sanity: the probes can tell OPENED from DENIED where access is granted.
        #expect(try probe(.storage, fixture, opens(fixture.image)).output == "OPENED")
        #expect(try probe(.crypt, fixture, opens(fixture.keyFile)).output == "OPENED")
        #expect(try probe(.crypt, fixture, "ls '\(fixture.stateDirectory)' | head -1 | grep -q anchor && echo LISTED").output == "LISTED")

        #expect(try probe(.crypt, fixture, opens(fixture.image)).output == "DENIED")
        #expect(try probe(.storage, fixture, opens(fixture.keyFile)).output == "DENIED")
        #expect(try probe(.storage, fixture, "ls '\(fixture.stateDirectory)' >/dev/null 2>&1 && echo LISTED || echo DENIED").output == "DENIED")
        #expect(try probe(.storage, fixture, "test -e /dev/tpmrm0 || test -e /dev/tpm0 && echo TPM || echo NOTPM").output == "NOTPM")
        #expect(try probe(.storage, fixture, "id -u").output == String(BootFixture.storageUID))
        #expect(try probe(.storage, fixture, "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status | tr -s '\\t' ' '").output
            == "CapEff: 0000000000000000\nCapBnd: 0000000000000000\nNoNewPrivs: 1")

        // A TCP listener on the host's loopback: reachable from here, not from the sandbox.
        let listener = try Listener(binding: .tcp(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let port = try #require(localPort(listener.fileDescriptor))
        let connect = "/usr/bin/python3 -c \"import socket; socket.create_connection(('127.0.0.1', \(port)), timeout=3); print('CONNECTED')\" 2>/dev/null || echo UNREACHABLE"
        #expect(try run(["/bin/sh", "-c", connect]).output == "CONNECTED")
        #expect(try probe(.storage, fixture, connect).output == "UNREACHABLE")
        #expect(try probe(.crypt, fixture, connect).output == "UNREACHABLE")
    }

    @Test("a system call outside the allowlist kills the domain, and the supervisor reports it")
    func seccompKills() throws {
        try requireBootPrivileges()
        let compiler = access("/opt/swift/usr/bin/clang", X_OK) == 0 ? "/opt/swift/usr/bin/clang" : try tool("cc", package: "gcc")
        let fixture = try BootFixture()
        // A static probe: `probe ptrace` calls ptrace (not allowed), anything
        // else exits 3 using only allowed calls.
        let source = fixture.scratch.file("probe.c")
        try """
            #include <string.h>
            #include <sys/syscall.h>
            #include <unistd.h>
            int main(int argc, char **argv) {
                for (int i = 1; i < argc; i++) if (strcmp(argv[i], "ptrace") == 0) syscall(SYS_ptrace, 0, 0, 0, 0);
                return 3;
            }
            """.write(toFile: source, atomically: true, encoding: .utf8)
        let probe = fixture.scratch.file("probe")
        try runChecked([compiler, "-static", "-O1", "-o", probe, source])

        fixture.storageExecutable = probe
        try fixture.writeManifest()
        var text = try String(contentsOfFile: fixture.manifestPath, encoding: .utf8)
        text = text.replacingOccurrences(of: "user = \(BootFixture.storageUID)\n", with: "user = \(BootFixture.storageUID)\narguments = [\"ptrace\"]\n")
        try text.write(toFile: fixture.manifestPath, atomically: true, encoding: .utf8)
        let killed = try fixture.bulkhead(["boot"])
        #expect(killed.status == 1)
        #expect(killed.output.contains("storage domain killed by signal 31 (SIGSYS): a system call outside its seccomp allowlist"), "\(killed.output)")
        #expect(try fixture.domain(.storage).lastExit?.contains("SIGSYS") == true)

        // The same probe without the forbidden call ends by itself.
        try fixture.writeManifest()
        let exited = try fixture.bulkhead(["boot"])
        #expect(exited.output.contains("storage domain exited with status 3"), "\(exited.output)")
    }

    private func localPort(_ fd: Int32) -> UInt16? {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let result = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return result == 0 ? UInt16(bigEndian: address.sin_port) : nil
    }
}
