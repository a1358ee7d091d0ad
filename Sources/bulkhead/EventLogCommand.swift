import ArgumentParser
import DaemonSupport
import Foundation
import LaunchMeasurement
import TPM
import Toolstack

/// `bulkhead eventlog`: prints the launch event log and replays it against
/// the TPM's PCR values.
struct EventLog: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eventlog",
        abstract: "Print the measured-launch event log and replay it against the TPM's PCRs.",
        discussion: "Exits 0 when every PCR in the log matches its replay, 2 on a mismatch.")

    @OptionGroup var runtime: RuntimeOptions

    @Option(name: .customLong("tcti"), help: ArgumentHelp("The TPM (default: the manifest's tpm_tcti).", valueName: "tcti"))
    var tcti: String?

    func run() throws {
        let layout = try runtime.layout()
        let events: [LaunchEvent]
        do { events = try Measurement.readLog(layout.eventLog) } catch { throw commandFailure(program, error.description) }
        for (index, event) in events.enumerated() {
            print("\(index)  PCR \(event.pcr)  \(event.domain.rawValue)  \(event.kind.rawValue)  \(event.digest)")
            switch event.kind {
            case .executable: print("      \(event.detail)")
            case .configuration:
                for line in event.detail.split(separator: "\n") { print("      | \(line)") }
            }
        }
        let replayed = replay(events)
        let tcti = try self.tcti ?? runtime.loadManifest().tcti
        guard tcti != BootManifest.noTPM else {
            print("not measured into a TPM (tpm_tcti = \"none\"); replayed:")
            for (pcr, value) in replayed.sorted(by: { $0.key < $1.key }) { print("PCR \(pcr)  \(hexString(value))") }
            return
        }
        let current: [Int: [UInt8]]
        do {
            let context = try TPMContext(tcti: tcti)
            current = try context.readPCRs(PCRSelection(replayed.keys))
        } catch {
            throw commandFailure(program, "cannot read the PCRs from \(tcti): \(error)")
        }
        var mismatch = false
        for (pcr, value) in replayed.sorted(by: { $0.key < $1.key }) {
            let matches = current[pcr] == value
            mismatch = mismatch || !matches
            print("PCR \(pcr)  replayed \(hexString(value))  TPM \(current[pcr].map(hexString) ?? "?")  \(matches ? "match" : "MISMATCH")")
        }
        if mismatch { throw ExitCode(2) }
    }
}
