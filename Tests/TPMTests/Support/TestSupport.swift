import Foundation
import Keys

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
