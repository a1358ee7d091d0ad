import Foundation

let kibibyte = 1 << 10
let mebibyte = 1 << 20

/// `count` bytes from /dev/urandom (the kernel is much faster than a
/// generator loop in a debug build).
func randomData(_ count: Int) -> Data {
    guard let source = FileHandle(forReadingAtPath: "/dev/urandom") else { fatalError("cannot open /dev/urandom") }
    defer { try? source.close() }
    var data = Data()
    while data.count < count {
        guard let chunk = try? source.read(upToCount: min(count - data.count, 1 << 20)), !chunk.isEmpty else {
            fatalError("short read from /dev/urandom")
        }
        data.append(chunk)
    }
    return data
}

/// A fresh seed, printed by the tests that use it.
func freshSeed() -> UInt64 { UInt64.random(in: 1...UInt64.max) }

/// Creates (or truncates) `path` as a sparse file of `size` bytes.
func makeSparseFile(_ path: String, size: Int) throws {
    guard FileManager.default.createFile(atPath: path, contents: nil), truncate(path, off_t(size)) == 0 else {
        throw ChainError.setup("cannot create the sparse file \(path): \(String(cString: strerror(errno)))")
    }
}

func readFile(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

func writeFile(_ path: String, _ data: Data) throws { try data.write(to: URL(fileURLWithPath: path)) }

/// The first offset where `a` and `b` differ, or nil when they are equal.
func firstDifference(_ a: Data, _ b: Data) -> Int? {
    if a == b { return nil }
    let common = min(a.count, b.count)
    let found = a.withUnsafeBytes { (x: UnsafeRawBufferPointer) in
        b.withUnsafeBytes { (y: UnsafeRawBufferPointer) in (0..<common).first { x[$0] != y[$0] } }
    }
    return found ?? common
}

/// Whether every byte of `data[range]` equals `byte`.
func allBytes(_ data: Data, _ range: Range<Int>, equal byte: UInt8) -> Bool {
    precondition(range.lowerBound >= data.startIndex && range.upperBound <= data.endIndex, "range outside the data")
    guard !range.isEmpty else { return true }
    return data.withUnsafeBytes { raw in
        uniformByte(UnsafeRawBufferPointer(rebasing: raw[(range.lowerBound - data.startIndex)..<(range.upperBound - data.startIndex)])) == byte
    }
}

/// The byte every byte of `bytes` equals, or nil if they differ (or there
/// are none). A block compared with itself one byte on is uniform exactly
/// when every byte equals the first: one memcmp, fast even in debug builds.
func uniformByte(_ bytes: UnsafeRawBufferPointer) -> UInt8? {
    guard let base = bytes.baseAddress, bytes.count > 0 else { return nil }
    // SAFETY: both ranges lie inside `bytes`: [0, count-1) and [1, count).
    return memcmp(base, base + 1, bytes.count - 1) == 0 ? bytes[0] : nil
}
