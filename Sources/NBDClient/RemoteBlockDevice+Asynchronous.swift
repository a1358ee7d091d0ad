import BlockDevice
import NBDProtocol

/// READ and WRITE started with `start(_:completion:)`: the crypt domain's
/// fast path to the storage domain. Anything the synchronous path would
/// retry (a connection that died) is handed back to be redone there, where
/// reconnecting and resending happen. A batch of pieces is one `start`:
/// registered and sent together, answered by one completion.
extension RemoteBlockDevice: AsynchronousBlockDevice {
    public func startRead(
        at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        startReads([(offset, buffer)], completion: completion)
    }

    /// FUA without NBD_FLAG_SEND_FUA takes a FLUSH after the write: left to
    /// the synchronous path.
    public func startWrite(
        at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        startWrites([(offset, buffer)], fua: fua, completion: completion)
    }

    public func startReads(_ pieces: [ReadPiece], completion: @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool {
        guard !pieces.isEmpty, pieces.allSatisfy({ !$0.buffer.isEmpty }) else { return false }
        return start(pieces.map { .read(offset: $0.offset, into: $0.buffer) }, .outcome(command: "NBD_CMD_READ", completion))
    }

    public func startWrites(_ pieces: [WritePiece], fua: Bool, completion: @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool {
        startWrites(pieces, fua: fua, lending: false, completion: completion)
    }

    /// Large pieces go to the socket by reference (`SplicePipe.send`).
    public func startLentWrites(_ pieces: [WritePiece], fua: Bool, completion: @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool {
        startWrites(pieces, fua: fua, lending: true, completion: completion)
    }

    private func startWrites(
        _ pieces: [WritePiece], fua: Bool, lending: Bool, completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        guard !pieces.isEmpty, pieces.allSatisfy({ !$0.buffer.isEmpty }), !isReadOnly, !fua || flags.contains(.sendFUA) else {
            return false
        }
        return start(
            pieces.map { .write(offset: $0.offset, from: $0.buffer, fua: fua) }, .outcome(command: "NBD_CMD_WRITE", completion),
            lending: lending)
    }

    /// NBD_CMD_READ of every piece in one batch (`perform(_:)`): pipelined
    /// on one connection and resent across reconnects as a whole.
    public func read(_ pieces: [ReadPiece]) throws(BlockDeviceError) {
        try performPieces(pieces.map { ($0.offset, $0.buffer.count) }, "NBD_CMD_READ") { .read(offset: pieces[$0].offset, into: pieces[$0].buffer) }
    }

    /// NBD_CMD_WRITE of every piece in one batch, as `read(_:)` reads: the
    /// metadata a commit or checkpoint writes, and the synchronous path's
    /// sealed runs, cost one round trip however scattered their places.
    public func write(_ pieces: [WritePiece]) throws(BlockDeviceError) {
        guard !isReadOnly else { throw .readOnly }
        try performPieces(pieces.map { ($0.offset, $0.buffer.count) }, "NBD_CMD_WRITE") {
            .write(offset: pieces[$0].offset, from: pieces[$0].buffer, fua: false)
        }
    }

    /// With NBD_FLAG_SEND_FUA, every piece with FUA and NBD_CMD_FLUSH in
    /// one batch. The flush, sent beside the pieces, covers only writes
    /// answered before it (doc/proto.md), so what it adds is the writes
    /// answered before this call; FUA makes each piece durable by itself.
    /// Without FUA, the pieces, then the flush once they are answered.
    public func writeDurably(_ pieces: [WritePiece]) throws(BlockDeviceError) {
        guard !isReadOnly else { throw .readOnly }
        guard flags.contains(.sendFUA), flags.contains(.sendFlush) else {
            try write(pieces)
            try flush()
            return
        }
        try performPieces(pieces.map { ($0.offset, $0.buffer.count) }, "NBD_CMD_WRITE with FUA", flushing: true) {
            .write(offset: pieces[$0].offset, from: pieces[$0].buffer, fua: true)
        }
    }

    /// Checks every span, then performs the operation of each non-empty one
    /// (`operation(index)`) in one batch; throws the first failure, in
    /// piece order.
    private func performPieces(
        _ spans: [(offset: UInt64, count: Int)], _ command: String, flushing: Bool = false, _ operation: (Int) -> NBDOperation
    ) throws(BlockDeviceError) {
        for span in spans { try checkRange(span.offset, UInt64(span.count)) }
        let live = spans.indices.filter { spans[$0].count > 0 }
        var operations = live.map(operation)
        // Appended in place: a concatenation copied every batch, flushing or not.
        if flushing { operations.append(.flush) }
        let results = perform(operations)
        for (index, result) in zip(live, results) {
            if case .failure(let error) = result {
                throw blockDeviceError(error, "\(command) at \(spans[index].offset)+\(spans[index].count)")
            }
        }
        if flushing, case .failure(let error) = results[live.count] { throw blockDeviceError(error, "NBD_CMD_FLUSH") }
    }

    /// One outcome for a batch: any connection failure makes it a redo,
    /// otherwise the first final failure (in piece order) fails it.
    func outcome(_ results: BatchResults, _ command: String, _ operations: [NBDOperation]) -> AsynchronousOutcome {
        var outcome = AsynchronousOutcome.done
        guard !results.allSucceeded else { return outcome }
        for (index, result) in results.enumerated() {
            guard case .failure(let error) = result else { continue }
            switch error {
            case .server(.shutdown, _): return .redoSynchronously
            case .server, .invalidRequest:
                if case .done = outcome {
                    outcome = .failed(blockDeviceError(error, "\(command) at \(operations[index].offset)+\(operations[index].length ?? 0)"))
                }
            default: return .redoSynchronously
            }
        }
        return outcome
    }
}
