import Foundation

/// The NBD trace qemu-io writes with `--trace EVENT` (qemu's log backend,
/// on stderr), one line per request sent and per simple reply received:
///
///     nbd_send_request Sending request to server: { .from = 0, .len = 0, .handle = 9428, .flags = 0x0, .type = 3 (flush) }
///     nbd_receive_simple_reply Got simple reply: { .error = 0 (success), handle = 9428 }
///
/// It is how a step learns whether a `flush` went through: qemu-io (7.2)
/// prints nothing for a flush, failed or not. A request that fails gets a
/// simple reply with an error, a structured error chunk (not traced), or no
/// reply at all when the connection is gone.
enum QemuIOTrace {
    static let events = ["nbd_send_request", "nbd_receive_simple_reply"]

    enum Line: Equatable {
        /// A request of `type` ("write", "flush", "trim", …) was sent.
        case request(type: String, handle: String)
        /// A simple reply arrived; `succeeded` when its error is 0.
        case reply(handle: String, succeeded: Bool)
    }

    /// The trace event on `line`, nil for any other line.
    static func parse(_ line: Substring) -> Line? {
        if line.contains("nbd_send_request ") {
            guard let handle = value(after: ".handle = ", in: line, upTo: ","), let type = value(after: " (", in: line, upTo: ")")
            else { return nil }
            return .request(type: type, handle: handle)
        }
        if line.contains("nbd_receive_simple_reply ") {
            guard let handle = value(after: "handle = ", in: line, upTo: " "), let error = value(after: ".error = ", in: line, upTo: " ")
            else { return nil }
            return .reply(handle: handle, succeeded: error == "0")
        }
        return nil
    }

    /// `text` without its trace lines: what qemu-io itself printed.
    static func withoutTrace(_ text: String) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false).filter { parse($0) == nil }.joined(separator: "\n")
    }

    /// The characters after the last `marker` on `line` up to `end`.
    private static func value(after marker: String, in line: Substring, upTo end: Character) -> String? {
        guard let start = line.range(of: marker, options: .backwards)?.upperBound else { return nil }
        let rest = line[start...]
        let value = rest.prefix { $0 != end && $0 != "}" }
        return value.isEmpty ? nil : String(value)
    }
}
