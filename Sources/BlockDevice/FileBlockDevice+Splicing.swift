/// A file on a memory file system is its page cache: nothing there waits
/// for a disk or fails part way, so a READ may go out with sendfile(2).
/// Other files keep the copying path, whose RWF_NOWAIT read says whether
/// the page cache has the bytes before any of them is promised.
extension FileBlockDevice: SplicingBlockDevice {
    public func splicedRange(at offset: UInt64, count: Int) -> FileRange? {
        guard case .always = inlinePolicy, count > 0, let start = Int64(exactly: offset) else { return nil }
        return FileRange(descriptor: fd, offset: start, count: count)
    }
}
