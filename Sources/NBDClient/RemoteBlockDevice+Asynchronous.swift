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
        let spans = pieces.map { ($0.offset, $0.buffer.count) }
        return start(pieces.map { .read(offset: $0.offset, into: $0.buffer) }) { results in
            completion(self.outcome(results, "NBD_CMD_READ", spans))
        }
    }

    public func startWrites(_ pieces: [WritePiece], fua: Bool, completion: @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool {
        guard !pieces.isEmpty, pieces.allSatisfy({ !$0.buffer.isEmpty }), !isReadOnly, !fua || flags.contains(.sendFUA) else {
            return false
        }
        let spans = pieces.map { ($0.offset, $0.buffer.count) }
        return start(pieces.map { .write(offset: $0.offset, from: $0.buffer, fua: fua) }) { results in
            completion(self.outcome(results, "NBD_CMD_WRITE", spans))
        }
    }

    /// NBD_CMD_READ of every piece in one batch (`perform(_:)`): pipelined
    /// on one connection and resent across reconnects as a whole.
    public func read(_ pieces: [ReadPiece]) throws(BlockDeviceError) {
        for piece in pieces { try checkRange(piece.offset, UInt64(piece.buffer.count)) }
        let live = pieces.filter { !$0.buffer.isEmpty }
        let results = perform(live.map { .read(offset: $0.offset, into: $0.buffer) })
        for (piece, result) in zip(live, results) {
            if case .failure(let error) = result {
                throw blockDeviceError(error, "NBD_CMD_READ at \(piece.offset)+\(piece.buffer.count)")
            }
        }
    }

    /// One outcome for a batch: any connection failure makes it a redo,
    /// otherwise the first final failure (in piece order) fails it.
    private func outcome(_ results: [Result<Void, NBDClientError>], _ command: String, _ spans: [(UInt64, Int)]) -> AsynchronousOutcome {
        var outcome = AsynchronousOutcome.done
        for (index, result) in results.enumerated() {
            guard case .failure(let error) = result else { continue }
            switch error {
            case .server(.shutdown, _): return .redoSynchronously
            case .server, .invalidRequest:
                if case .done = outcome {
                    outcome = .failed(blockDeviceError(error, "\(command) at \(spans[index].0)+\(spans[index].1)"))
                }
            default: return .redoSynchronously
            }
        }
        return outcome
    }
}
