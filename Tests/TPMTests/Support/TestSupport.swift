import Foundation
import Keys
import Synchronization

/// A private directory under /tmp, removed on deinit.
final class TemporaryDirectory: Sendable {
    let path: String

    init() throws {
        var template = Array("/tmp/tpmt-XXXXXX".utf8CString)
        guard let result = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw POSIXError(.init(rawValue: errno) ?? .EIO)
        }
        path = String(cString: result)
    }

    func file(_ name: String) -> String { path + "/" + name }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Waits until `condition` holds, polling; false if `timeout` seconds pass first.
func eventually(timeout: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// A value behind a mutex, shareable between threads.
final class Locked<T: Sendable>: Sendable {
    private let mutex: Mutex<T>
    init(_ value: T) { mutex = Mutex(value) }
    func withLock<R>(_ body: (inout T) -> R) -> R { mutex.withLock { body(&$0) } }
    var value: T { withLock { $0 } }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `count` random bytes, as a plain array (for comparisons) and as secret bytes.
func randomSecret(_ count: Int) -> (bytes: [UInt8], secret: SecretBytes) {
    let bytes = (0..<count).map { _ in UInt8.random(in: 0...255) }
    var copy = bytes
    return (bytes, SecretBytes.taking(&copy))
}

func secret(_ text: String) -> SecretBytes {
    var bytes = Array(text.utf8)
    return SecretBytes.taking(&bytes)
}

func contents(_ secret: SecretBytes) -> [UInt8] {
    secret.withUnsafeBytes { Array($0) }
}

func randomDigest() -> [UInt8] { (0..<32).map { _ in UInt8.random(in: 0...255) } }

/// Whether any `window`-byte run of `needle` occurs in `haystack`.
func containsAnyWindow(of needle: [UInt8], window: Int, in haystack: [UInt8]) -> Bool {
    guard needle.count >= window, haystack.count >= window else { return false }
    var windows = Set<[UInt8]>()
    for start in 0...(needle.count - window) { windows.insert(Array(needle[start..<start + window])) }
    for start in 0...(haystack.count - window) where windows.contains(Array(haystack[start..<start + window])) {
        return true
    }
    return false
}
