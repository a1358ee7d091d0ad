import Foundation
import TestScratch

/// Runs qemu-io on `uri` with one `-c` per command (raw format, discard
/// passed through as NBD_CMD_TRIM). qemu-io exits 1 when any command fails,
/// a pattern check included.
func qemuIO(_ uri: String, _ commands: [String], timeout: Double = 60) throws -> CommandResult {
    try run(["qemu-io", "-f", "raw", "--discard=unmap"] + commands.flatMap { ["-c", $0] } + [uri], timeout: timeout)
}

/// Launches qemu-io without waiting for it: the crash tests kill a daemon
/// while it runs. Write-back caching: writes go without FUA, as a guest's
/// do, so only a flush makes them durable (qemu-io's default,
/// write-through, sets FUA on every write). qemu-io prints nothing for a
/// `flush`, whether it succeeds or fails, so it also traces its NBD
/// requests and the replies to them (`QemuIOTrace`), its output
/// line-buffered (stdbuf) so that the trace falls in order between the
/// commands' reports.
func launchQemuIO(_ uri: String, _ commands: [String], logPath: String) throws -> ChildProcess {
    let tracing = QemuIOTrace.events.flatMap { ["--trace", $0] }
    return try ChildProcess(
        ["stdbuf", "-oL", try Tools.path(of: "qemu-io")] + tracing + ["-f", "raw", "--cache=writeback", "--discard=unmap"] + commands.flatMap { ["-c", $0] } + [uri],
        logPath: logPath)
}

/// Whether a finished qemu-io run had every command succeed.
func qemuIOSucceeded(_ status: Int32, _ output: String) -> Bool {
    status == 0 && !output.contains("failed") && !output.contains("error")
}

/// The whole export at `uri`, read with nbdcopy through a file in `scratch`.
func readExport(_ uri: String, in scratch: Scratch, timeout: Double = 120) throws -> Data {
    let path = scratch.file("readback-\(UUID().uuidString.prefix(8)).raw")
    defer { unlink(path) }
    try runChecked(["nbdcopy", uri, path], timeout: timeout)
    return try readFile(path)
}

/// Writes `data` to the start of the export at `uri` with nbdcopy, then
/// NBD_CMD_FLUSH (--flush).
func writeExport(_ uri: String, _ data: Data, in scratch: Scratch, timeout: Double = 120) throws {
    let path = scratch.file("source-\(UUID().uuidString.prefix(8)).raw")
    defer { unlink(path) }
    try writeFile(path, data)
    try runChecked(["nbdcopy", "--flush", path, uri], timeout: timeout)
}
