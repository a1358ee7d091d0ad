import CSystemShims
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A READ may go out with sendfile(2) when nothing in it can wait for a
/// disk or fail part way: on a memory file system, which is its page
/// cache, when the file still holds the range; elsewhere when cachestat(2)
/// finds every page of the range cached, the same test the copying path
/// makes with RWF_NOWAIT (pages past the end of a file are never cached).
/// A page evicted between the two calls only makes sendfile read it from
/// the disk; should that fail, the connection ends (the header is out)
/// and the client's retry finds the page uncached and takes the copying
/// path, which answers the error.
extension FileBlockDevice: SplicingBlockDevice {
    public func splicedRange(at offset: UInt64, count: Int) -> FileRange? {
        guard count > 0, let start = Int64(exactly: offset) else { return nil }
        switch inlinePolicy {
        case .always:
            // A file shrunk under the server: the copying path answers the
            // short read with an error instead of ending the connection.
            var status = stat()
            guard fstat(fd, &status) == 0, Int64(status.st_size) - start >= Int64(count) else { return nil }
        case .nowait(let support):
            guard support.allowsCacheQueries, isCached(offset, count, support) else { return nil }
        case .never:
            return nil
        }
        return FileRange(descriptor: fd, offset: start, count: count, owner: self)
    }

    /// On a memory file system only, whose writes are memory copies that
    /// never wait for a disk: elsewhere a buffered write can wait for
    /// writeback, which belongs on a worker.
    public var splicesWrites: Bool {
        guard !isReadOnly, case .always = inlinePolicy else { return false }
        return true
    }

    public func splicedWriteRange(at offset: UInt64, count: Int) -> FileRange? {
        guard splicesWrites, count > 0, let start = Int64(exactly: offset) else { return nil }
        return FileRange(descriptor: fd, offset: start, count: count, owner: self)
    }

    private func isCached(_ offset: UInt64, _ count: Int, _ support: NowaitSupport) -> Bool {
        let page = UInt64(Self.pageSize)
        let first = offset / page
        let end = (offset + UInt64(count) + page - 1) / page
        let cached = bulkhead_cached_pages(fd, first * page, (end - first) * page)
        if cached < 0 {
            if LinuxSystem.isUnsupported(errno) || errno == EPERM { support.refuseCacheQueries() }
            return false
        }
        return UInt64(cached) >= end - first
    }

    private static let pageSize = max(Int(sysconf(Int32(_SC_PAGESIZE))), 4096)
}
