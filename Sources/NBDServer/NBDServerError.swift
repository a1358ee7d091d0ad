import NBDProtocol

/// Why a server could not be set up.
public enum NBDServerError: Error, Sendable, Equatable, CustomStringConvertible {
    case noExports
    case duplicateExport(String)
    case badExportName(String, String)
    case badExportDescription(String, String)
    case unknownDefaultExport(String)
    case badBlockSize(export: String, minimum: UInt32)

    public var description: String {
        switch self {
        case .noExports: "no exports to serve"
        case .duplicateExport(let name): "export name \"\(name)\" is used twice"
        case .badExportName(let name, let why): "bad export name \"\(name.prefix(64))\": \(why)"
        case .badExportDescription(let name, let why): "bad description of export \"\(name)\": \(why)"
        case .unknownDefaultExport(let name): "default export \"\(name)\" is not among the exports"
        case .badBlockSize(let name, let minimum):
            "export \"\(name)\" has block size \(minimum); it must be a power of two up to 65536"
        }
    }
}
