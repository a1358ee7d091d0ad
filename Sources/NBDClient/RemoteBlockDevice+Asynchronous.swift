import BlockDevice
import NBDProtocol

/// READ and WRITE started with `start(_:completion:)`: the crypt domain's
/// fast path to the storage domain. Anything the synchronous path would
/// retry (a connection that died) is handed back to be redone there, where
/// reconnecting and resending happen.
extension RemoteBlockDevice: AsynchronousBlockDevice {
    public func startRead(
        at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        guard !buffer.isEmpty else { return false }
        let count = buffer.count
        return start([.read(offset: offset, into: buffer)]) { results in
            completion(self.outcome(results[0], "NBD_CMD_READ at \(offset)+\(count)"))
        }
    }

    /// FUA without NBD_FLAG_SEND_FUA takes a FLUSH after the write: left to
    /// the synchronous path.
    public func startWrite(
        at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        guard !buffer.isEmpty, !isReadOnly, !fua || flags.contains(.sendFUA) else { return false }
        let count = buffer.count
        return start([.write(offset: offset, from: buffer, fua: fua)]) { results in
            completion(self.outcome(results[0], "NBD_CMD_WRITE at \(offset)+\(count)"))
        }
    }

    private func outcome(_ result: Result<Void, NBDClientError>, _ what: @autoclosure () -> String) -> AsynchronousOutcome {
        switch result {
        case .success: .done
        case .failure(let error):
            switch error {
            case .server(.shutdown, _): .redoSynchronously
            case .server, .invalidRequest: .failed(blockDeviceError(error, what()))
            default: .redoSynchronously
            }
        }
    }
}
