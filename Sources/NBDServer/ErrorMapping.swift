#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import BlockDevice
import NBDProtocol

extension BlockDeviceError {
    /// The NBD error a client is told for this failure of `command`
    /// (proto.md, "Error values").
    func nbdError(for command: Command) -> NBDErrorCode {
        switch self {
        case .io(_, let code):
            switch code {
            case EPERM, EACCES, EROFS: .permissionDenied
            case ENOSPC, EDQUOT: .noSpace
            case EINVAL: .invalid
            case ENOMEM: .outOfMemory
            case EOPNOTSUPP, ENOSYS: .notSupported
            case EOVERFLOW: .overflow
            default: .ioError
            }
        case .outOfRange:
            command == .write || command == .writeZeroes ? .noSpace : .invalid
        case .readOnly: .permissionDenied
        case .notSupported: .notSupported
        case .noSpace: .noSpace
        // The device behind the export is unreachable (a storage domain that
        // did not come back in time): an I/O error. NBD_ESHUTDOWN would tell
        // the client that this server is shutting down, which it is not.
        case .unavailable: .ioError
        }
    }

    /// Whether the failure says something about the storage that an
    /// operator should see, rather than about the request.
    var isStorageFailure: Bool {
        switch self {
        case .io, .unavailable, .noSpace: true
        case .outOfRange, .readOnly, .notSupported: false
        }
    }
}

/// A message for a request that `validate` refused.
func rejectionMessage(_ header: RequestHeader, _ error: NBDErrorCode, _ export: ExportDescription) -> String {
    let request = "\(header.command) at \(header.offset)+\(header.length)"
    switch error {
    case .permissionDenied: return "\(request): export \"\(export.name)\" is read-only"
    case .noSpace: return "\(request): past the end of the export (\(export.size) bytes)"
    default:
        let (end, overflow) = header.offset.addingReportingOverflow(UInt64(header.length))
        if overflow || end > export.size { return "\(request): past the end of the export (\(export.size) bytes)" }
        if header.length > export.blockSize.maximum {
            return "\(request): longer than the maximum of \(export.blockSize.maximum) bytes"
        }
        return "\(request) with flags 0x\(String(header.flags.rawValue, radix: 16)): invalid request"
    }
}
