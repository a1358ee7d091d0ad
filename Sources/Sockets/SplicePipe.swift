import CSystemShims
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A pipe that carries a stream's bytes from a socket into a file without
/// copying them through user memory (splice(2)): from the socket into the
/// pipe the kernel passes references to the socket buffers' pages, and from
/// the pipe into the file it copies them once, into the page cache. A read
/// into a buffer and a pwrite from it copy every byte twice. The other way,
/// `send` carries a buffer's pages into a socket (vmsplice(2), splice(2))
/// where `send(2)` would copy them. Used by one thread at a time; the pipe
/// is empty between calls.
public final class SplicePipe: Sendable {
    private let readEnd: Int32
    private let writeEnd: Int32
    /// Bytes one `fill` takes from the socket at most.
    public let capacity: Int

    /// The capacity asked for: 1 MiB, the largest WRITE the crypt domain
    /// sends in one piece and Linux's default `fs.pipe-max-size`, so such a
    /// payload crosses in one or two rounds. An unprivileged process past
    /// that limit keeps the default (64 KiB).
    public static let preferredCapacity = 1 << 20

    public init() throws(SocketError) {
        var ends: (Int32, Int32) = (-1, -1)
        let result = withUnsafeMutableBytes(of: &ends) { bulkhead_pipe($0.baseAddress!.assumingMemoryBound(to: Int32.self)) }
        guard result == 0 else { throw .system(operation: "pipe2 for", address: "a splice", errno: errno) }
        readEnd = ends.0
        writeEnd = ends.1
        capacity = Int(max(bulkhead_resize_pipe(writeEnd, Int32(Self.preferredCapacity)), 4096))
    }

    deinit {
        close(readEnd)
        close(writeEnd)
    }

    /// Moves the next `count` bytes of `socket`'s stream into the file
    /// `file` at `offset`, in rounds of at most `capacity`. A file error
    /// does not stop the move: the rest of the bytes are taken off the
    /// stream and dropped, so the stream stays in step, and the first
    /// error's errno is returned (0: all written). Throws when the stream
    /// fails (ends, times out under SO_RCVTIMEO): the connection is then
    /// out of step and must close.
    public func move(_ count: Int, from socket: Socket, into file: Int32, at offset: Int64) throws(SocketError) -> Int32 {
        try transfer(count, from: socket, into: file, at: offset)
    }

    /// Takes the next `count` bytes off `socket`'s stream and drops them
    /// (a payload whose write already failed), throwing as `move` does.
    public func skip(_ count: Int, from socket: Socket) throws(SocketError) {
        _ = try transfer(count, from: socket, into: nil, at: 0)
    }

    private func transfer(_ count: Int, from socket: Socket, into file: Int32?, at offset: Int64) throws(SocketError) -> Int32 {
        var left = count
        var position = offset
        var failure: Int32 = 0
        while left > 0 {
            let taken = try fill(from: socket, upTo: min(left, capacity))
            if let file, failure == 0 {
                failure = drain(taken, into: file, at: position)
            } else {
                discard(taken)
            }
            left -= taken
            position += Int64(taken)
        }
        return failure
    }

    /// Sends `bytes` on `socket` through the pipe (vmsplice(2), then
    /// splice(2)): the socket's buffers hold references to the pages of
    /// `bytes`, not a copy. The caller must leave them unchanged until the
    /// peer has read them, and must never put anything there the peer may
    /// not see: a peer that delays reading sees whatever the pages hold
    /// when it does. Throws as `Socket.writeAll` does; the pipe is then
    /// unusable.
    public func send(_ bytes: UnsafeRawBufferPointer, on socket: Socket) throws(SocketError) {
        var done = 0
        while done < bytes.count {
            let taken = bulkhead_vmsplice(writeEnd, bytes.baseAddress! + done, min(bytes.count - done, capacity))
            if taken < 0 {
                if errno == EINTR { continue }
                throw .system(operation: "vmsplice for", address: socket.peerDescription, errno: errno)
            }
            var left = taken
            while left > 0 {
                let sent = bulkhead_splice_to_socket(readEnd, socket.fileDescriptor, left)
                if sent > 0 {
                    left -= sent
                    continue
                }
                if sent < 0, errno == EINTR { continue }
                if sent == 0 || errno == EPIPE || errno == ECONNRESET { throw .connectionClosed }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw .timedOut }
                throw .system(operation: "splice to", address: socket.peerDescription, errno: errno)
            }
            done += taken
        }
    }

    /// Splices what the socket has, at least one byte and at most `limit`,
    /// into the (empty) pipe; returns how many.
    private func fill(from socket: Socket, upTo limit: Int) throws(SocketError) -> Int {
        while true {
            let taken = bulkhead_splice_from_socket(socket.fileDescriptor, writeEnd, limit)
            if taken > 0 { return taken }
            if taken == 0 { throw .connectionClosed }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: throw .timedOut
            case ECONNRESET, EPIPE: throw .connectionClosed
            default: throw .system(operation: "splice from", address: socket.peerDescription, errno: errno)
            }
        }
    }

    /// Splices the `count` bytes the pipe holds into `file` at `offset`;
    /// on an error drops what is left of them and returns its errno.
    private func drain(_ count: Int, into file: Int32, at offset: Int64) -> Int32 {
        var done = 0
        while done < count {
            let written = bulkhead_splice_to_file(readEnd, file, offset + Int64(done), count - done)
            if written > 0 {
                done += written
                continue
            }
            if written < 0, errno == EINTR { continue }
            // Nothing written and no error: the file takes no more (a full
            // memory file system reports that as a short write).
            let code = written == 0 ? ENOSPC : errno
            discard(count - done)
            return code
        }
        return 0
    }

    /// Reads and drops `count` bytes the pipe holds.
    private func discard(_ count: Int) {
        var left = count
        withUnsafeTemporaryAllocation(byteCount: 16 * 1024, alignment: 16) { scratch in
            while left > 0 {
                let taken = read(readEnd, scratch.baseAddress, min(left, scratch.count))
                if taken > 0 {
                    left -= taken
                } else if taken < 0, errno == EINTR {
                    continue
                } else {
                    // Cannot happen while the pipe holds the bytes; never spin.
                    return
                }
            }
        }
    }
}
