import ArgumentParser
import DaemonSupport
import Foundation
import LaunchMeasurement
import Toolstack

/// Where the runtime folder is: `--runtime-dir`, or the manifest's.
struct RuntimeOptions: ParsableArguments {
    @Option(name: .customLong("manifest"), help: ArgumentHelp("The boot manifest (for its runtime folder).", valueName: "path"))
    var manifest = BootManifest.defaultPath

    @Option(name: .customLong("runtime-dir"), help: ArgumentHelp("The runtime folder (default: the manifest's).", valueName: "dir"))
    var runtimeDirectory: String?

    func loadManifest() throws -> BootManifest {
        do { return try ManifestFile.load(absolute(manifest)) } catch {
            throw commandFailure(program, error.description, status: configurationExitCode)
        }
    }

    func layout() throws -> RuntimeLayout {
        if let runtimeDirectory { return RuntimeLayout(root: runtimeDirectory) }
        return try loadManifest().layout
    }
}

/// `bulkhead status`: each domain's pid, uptime, restarts, exports, consumers.
struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the supervised domains: pid, uptime, restarts, exports and consumers.")

    @OptionGroup var runtime: RuntimeOptions

    @Flag(name: .customLong("json"), help: "Print the status as JSON.")
    var json = false

    func run() throws {
        let status: SupervisorStatus
        do { status = try SupervisorStatus.read(from: try runtime.layout().status) } catch let error as ToolstackError {
            throw commandFailure(program, error.description)
        }
        if json {
            print(status.json())
            return
        }
        print("supervisor pid \(status.supervisorPid), \(status.state), manifest \(status.manifest)")
        let header = ["domain", "state", "pid", "uid", "uptime", "restarts", "last exit"]
        var rows = [header]
        for domain in status.domains {
            rows.append([
                domain.role.rawValue, domain.state, domain.pid.map(String.init) ?? "-", String(domain.uid),
                domain.uptimeSeconds.map { String(format: "%.0f s", $0) } ?? "-", String(domain.restarts), domain.lastExit ?? "-",
            ])
        }
        let widths = header.indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            print(row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  "))
        }
        print("exports:")
        for export in status.exports {
            print("  \(export.volume)  \(export.socket)  consumers \(export.consumers.map(String.init).joined(separator: ","))")
        }
        if let root = status.root { print("root: \(root.export) on \(root.mountPoint) (\(root.device))") }
    }
}
