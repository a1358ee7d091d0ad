import BlockDevice
import NBDProtocol

/// A batch checked against the export and split into pieces of at most
/// `chunkSize`. The usual batch (every operation inside the export and no
/// larger than a chunk) is sent as it is, with no arrays made for it.
struct BatchPlan {
    private(set) var pieces: [NBDOperation]
    private(set) var merge: ResultMerge

    init(_ operations: [NBDOperation], device: RemoteBlockDevice) {
        guard operations.contains(where: { device.problem(with: $0) != nil || device.pieceCount(of: $0) != 1 }) else {
            pieces = operations
            merge = ResultMerge(settled: nil, owners: [])
            return
        }
        pieces = []
        merge = ResultMerge(settled: [Result<Void, NBDClientError>?](repeating: nil, count: operations.count))
        pieces.reserveCapacity(operations.count)
        merge.owners.reserveCapacity(operations.count)
        for (index, operation) in operations.enumerated() {
            if let problem = device.problem(with: operation) {
                merge.settled![index] = .failure(.invalidRequest(problem))
                continue
            }
            for piece in 0..<device.pieceCount(of: operation) {
                pieces.append(device.piece(piece, of: operation))
                merge.owners.append(index)
            }
        }
    }
}

/// The way back from a batch's piece results to one result per operation.
struct ResultMerge: Sendable {
    /// Results settled before sending (range problems), by operation; nil
    /// when the pieces are the operations themselves, one for one.
    var settled: [Result<Void, NBDClientError>?]?
    /// The operation each piece belongs to.
    var owners: [Int] = []

    /// One result per operation, of a started batch's piece results.
    func results(of pieceResults: BatchResults) -> BatchResults {
        settled == nil ? pieceResults : BatchResults(results(of: Array(pieceResults)))
    }

    /// One result per operation: its first failure (in piece order), or success.
    func results(of pieceResults: [Result<Void, NBDClientError>]) -> [Result<Void, NBDClientError>] {
        guard var results = settled else { return pieceResults }
        for (piece, result) in pieceResults.enumerated() {
            if case .failure = result, results[owners[piece]] == nil { results[owners[piece]] = result }
        }
        return results.map { $0 ?? .success(()) }
    }
}

extension RemoteBlockDevice {
    /// Starts a batch without blocking for its replies: the asynchronous
    /// form of `perform(_:)`, for callers that complete their own work on
    /// the reply (the crypt domain answering its consumer).
    ///
    /// Operations are checked and split exactly as `perform(_:)` does: an
    /// operation outside the export gets `.invalidRequest`, larger ones are
    /// sent in pieces of at most `chunkSize`, and each operation's result
    /// is its pieces' first failure.
    ///
    /// Returns false, having sent nothing and without ever calling
    /// `completion`, if the batch cannot start now without waiting for
    /// anything but the socket: no usable connection at this moment (the
    /// device is reconnecting, its export changed, the connection failed
    /// and nobody has replaced it yet) or the device is closed. The caller
    /// then uses `perform(_:)` or the `BlockDevice` methods, which wait for
    /// a reconnect and resend.
    ///
    /// Otherwise sends every piece on the current connection (pipelined,
    /// small requests in one buffered write) and returns true; `completion`
    /// is then called exactly once with one result per operation, in their
    /// order, after every reply of the batch has arrived and all READ data
    /// is in the caller's buffers, or once the connection has died. Buffers
    /// must stay valid, and read buffers untouched, until then; the device
    /// never touches them after calling `completion`.
    ///
    /// Nothing is resent across reconnects: if the connection dies, the
    /// operations it had not answered fail with the connection's failure
    /// (`.timedOut`, `.connectionLost`, `.protocolViolation`, NBD_ESHUTDOWN;
    /// `.closed` when the connection or device was closed locally), and the
    /// device notes the failure so that the next synchronous request
    /// reconnects. A request not answered within
    /// `Options.connection.requestTimeout` fails the connection with
    /// `.timedOut(.reply)`; the connection's reader thread checks every
    /// quarter of that timeout, and at least once a second.
    ///
    /// Where `completion` runs: on the connection's reader thread, after it
    /// has decoded all it read, with no lock held. If the connection ends
    /// by other means it runs on the thread ending it (a failed send, which
    /// may be this call before it returns; another caller's timeout;
    /// `close()`). If no operation needed sending (all outside the export,
    /// or an empty batch) it runs on the calling thread before this
    /// returns. `completion` must not block, and must not call `start` or
    /// `perform` on this device: the thread running it is the one that
    /// drains the storage server's replies.
    public func start(
        _ operations: [NBDOperation],
        completion: @escaping @Sendable ([Result<Void, NBDClientError>]) -> Void
    ) -> Bool {
        start(operations, .results(completion))
    }

    /// Who hears of a started batch: the caller of `start(_:completion:)`
    /// with every result, or an `AsynchronousBlockDevice` caller with one
    /// outcome. Told apart here rather than by wrapping one closure in
    /// another, which would allocate a second context for every READ and
    /// WRITE the crypt domain sends.
    enum StartCompletion: Sendable {
        case results(@Sendable ([Result<Void, NBDClientError>]) -> Void)
        /// The batch's outcome (`outcome(_:_:_:)`), naming `command` in errors.
        case outcome(command: String, @Sendable (AsynchronousOutcome) -> Void)
    }

    /// With `lending`, the WRITE payloads are lent (`startLentWrites`).
    func start(_ operations: [NBDOperation], _ completion: StartCompletion, lending: Bool = false) -> Bool {
        guard let connection = supervisor.currentConnection else { return false }
        let plan = BatchPlan(operations, device: self)
        guard !plan.pieces.isEmpty else {
            finish(completion, BatchResults(plan.merge.results(of: [])), operations)
            return true
        }
        let supervisor = self.supervisor
        let merge = plan.merge
        // SAFETY: the completion reads only the operations' offsets and
        // lengths, for error messages, never the buffers they point to.
        nonisolated(unsafe) let operations = operations
        return connection.start(plan.pieces, lending: lending) { pieceResults in
            var answered = pieceResults.allSucceeded
            var lost: NBDClientError?
            if !answered {
                for result in pieceResults {
                    switch result {
                    case .success, .failure(.server): answered = true
                    case .failure(let error): if error.isConnectionFailure, lost == nil { lost = error }
                    }
                }
            }
            // As `perform` does: an answer resets the reconnect backoff, a
            // dead connection is replaced by the next synchronous request.
            if answered { supervisor.requestAnswered() }
            if let lost { supervisor.connectionFailed(connection, lost) }
            self.finish(completion, merge.results(of: pieceResults), operations)
        }
    }

    private func finish(_ completion: StartCompletion, _ results: BatchResults, _ operations: [NBDOperation]) {
        switch completion {
        case .results(let body): body(Array(results))
        case .outcome(let command, let body): body(outcome(results, command, operations))
        }
    }
}
