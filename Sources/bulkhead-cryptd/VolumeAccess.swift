import DaemonSupport

/// Which peers may connect to a volume's socket, checked with SO_PEERCRED
/// before the NBD handshake (on top of the socket's 0660 permissions).
struct VolumeAccess: Sendable {
    /// `--allow-uid`: for every volume without its own list; empty allows
    /// any peer that can open the socket.
    var everyVolume: Set<UInt32>
    /// `--allow VOLUME=UID`: a volume's own list, which replaces `everyVolume`.
    var perVolume: [String: Set<UInt32>]

    func uids(for volume: String) -> Set<UInt32> { perVolume[volume] ?? everyVolume }

    /// Parses `--allow VOLUME=UID` values.
    static func parse(_ values: [String], program: String) throws -> [String: Set<UInt32>] {
        var lists: [String: Set<UInt32>] = [:]
        for value in values {
            let parts = value.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let uid = UInt32(parts[1]) else {
                throw commandFailure(program, "bad --allow \"\(value.prefix(80))\": expected VOLUME=UID", status: usageExitCode)
            }
            lists[parts[0], default: []].insert(uid)
        }
        return lists
    }
}
