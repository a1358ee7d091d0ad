import Foundation

/// `count` random bytes from /dev/urandom.
func randomBytes(_ count: Int) throws -> Data {
    guard let source = FileHandle(forReadingAtPath: "/dev/urandom") else {
        throw InteropError.setupFailed("cannot open /dev/urandom")
    }
    defer { try? source.close() }
    var data = Data()
    while data.count < count {
        guard let chunk = try source.read(upToCount: count - data.count), !chunk.isEmpty else {
            throw InteropError.setupFailed("short read from /dev/urandom")
        }
        data.append(chunk)
    }
    return data
}

/// Writes `data` to a new file at `path`.
func writeFile(_ path: String, _ data: Data) throws {
    try data.write(to: URL(fileURLWithPath: path))
}

/// Creates a sparse file of `size` bytes at `path` (reads back as zeroes).
func makeSparseFile(_ path: String, size: Int) throws {
    guard FileManager.default.createFile(atPath: path, contents: nil) else {
        throw InteropError.setupFailed("cannot create \(path)")
    }
    guard truncate(path, off_t(size)) == 0 else {
        throw InteropError.setupFailed("truncate \(path): \(String(cString: strerror(errno)))")
    }
}

/// The whole file at `path`.
func readFile(_ path: String) throws -> Data {
    try Data(contentsOf: URL(fileURLWithPath: path))
}

/// Offset of the first byte where `a` and `b` differ, or nil if they are equal.
func firstDifference(_ a: Data, _ b: Data) -> Int? {
    if a == b { return nil }
    let common = min(a.count, b.count)
    return a.withUnsafeBytes { (x: UnsafeRawBufferPointer) in
        b.withUnsafeBytes { (y: UnsafeRawBufferPointer) in (0..<common).first { x[$0] != y[$0] } }
    } ?? common
}

let mebibyte = 1 << 20
