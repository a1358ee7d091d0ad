import Foundation

/// The event log `bulkhead boot` appends to before each extend
/// (docs/toolstack.md, "Event log"): JSON Lines, one `LaunchEvent` object
/// per line with sorted keys, in extend order. A reader replays the lines
/// in order from the reset value and compares with the TPM.
public enum EventLogFormat {
    /// Largest event log read: a few events per domain launch.
    public static let maximumBytes = 1 << 20

    /// One line, newline included.
    public static func line(for event: LaunchEvent) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding a struct of strings and integers cannot fail.
        let data = (try? encoder.encode(event)) ?? Data()
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// A line that does not decode, or an event inconsistent with itself.
    public struct DecodeError: Error, Sendable, CustomStringConvertible {
        public var line: Int
        public var message: String
        public var description: String { "event log line \(line): \(message)" }
    }

    /// Decodes every line; a configuration event's digest must be the
    /// SHA-256 of its detail, since the detail is what a reader trusts.
    public static func events(from text: String) throws(DecodeError) -> [LaunchEvent] {
        guard text.utf8.count <= maximumBytes else { throw DecodeError(line: 0, message: "larger than \(maximumBytes) bytes") }
        var events: [LaunchEvent] = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
            let event: LaunchEvent
            do { event = try JSONDecoder().decode(LaunchEvent.self, from: Data(line.utf8)) } catch {
                throw DecodeError(line: index + 1, message: "not an event: \(error)")
            }
            guard (0...23).contains(event.pcr) else { throw DecodeError(line: index + 1, message: "PCR \(event.pcr) out of range") }
            guard let digest = event.digestBytes else { throw DecodeError(line: index + 1, message: "digest is not 32 bytes of hex") }
            if event.kind == .configuration, digest != sha256(event.detail.utf8) {
                throw DecodeError(line: index + 1, message: "the configuration's digest does not match its text")
            }
            events.append(event)
        }
        return events
    }
}
