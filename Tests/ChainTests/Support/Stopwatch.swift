import Foundation

/// Times the phases of a test, for the one-line summary it prints.
final class Stopwatch {
    private let start = Date()
    private var last = Date()
    private var phases: [(String, Double)] = []

    /// Ends the current phase, adding its time to `name`'s total.
    func lap(_ name: String) {
        let now = Date()
        if let index = phases.firstIndex(where: { $0.0 == name }) {
            phases[index].1 += now.timeIntervalSince(last)
        } else {
            phases.append((name, now.timeIntervalSince(last)))
        }
        last = now
    }

    var summary: String {
        let total = String(format: "%.1f s", Date().timeIntervalSince(start))
        return total + " (" + phases.map { "\($0.0) \(String(format: "%.1f", $0.1))" }.joined(separator: ", ") + ")"
    }
}
