/// A regular file read and written through the page cache can run requests
/// on the server's connection thread: a page-cache copy costs less than a
/// thread hand-off. Only when opened with `threaded: false` (storaged's
/// experimental `--inline`); by default, and always for a block device or
/// an O_DIRECT file, which may wait for the disk, requests go to worker
/// threads, so one slow request does not hold up the ones behind it.
extension FileBlockDevice: InlineBlockDevice {
    public var runsInline: Bool { !isBlockDevice && !isDirect && !threaded }
}
