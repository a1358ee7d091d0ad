/// A regular file read and written through the page cache runs requests on
/// the server's connection thread. A block device or O_DIRECT file may wait
/// for the disk: those requests go to worker threads, so one slow request
/// does not hold up the ones behind it. `threaded` asks for worker threads
/// for a regular file too (an image on a slow disk, mostly not cached).
extension FileBlockDevice: InlineBlockDevice {
    public var runsInline: Bool { !isBlockDevice && !isDirect && !threaded }
}
