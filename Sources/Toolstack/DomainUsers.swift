#if canImport(Glibc)
import Glibc
#endif
import LaunchMeasurement

/// The uid and gid a domain runs as.
public struct DomainIdentity: Sendable, Equatable {
    public var uid: uid_t
    public var gid: gid_t
}

extension BootManifest.User {
    /// The identity of this user: a uid stands for itself with the same gid
    /// (or the passwd entry's group if there is one); a name is looked up,
    /// and created as a system user with its own group if absent.
    public func resolve(createIfMissing: Bool) throws(ToolstackError) -> DomainIdentity {
        switch self {
        case .uid(let uid):
            if let entry = getpwuid(uid) { return DomainIdentity(uid: uid, gid: entry.pointee.pw_gid) }
            return DomainIdentity(uid: uid, gid: uid)
        case .name(let name):
            if let entry = getpwnam(name) { return DomainIdentity(uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid) }
            guard createIfMissing else { throw ToolstackError("no user named \(name)") }
            let outcome = try ProcessLaunch.run([
                "useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                "--shell", "/usr/sbin/nologin", "--comment", "Bulkhead domain", name,
            ])
            guard outcome.succeeded, let entry = getpwnam(name) else {
                throw ToolstackError("cannot create the system user \(name): \(outcome.output)")
            }
            return DomainIdentity(uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid)
        }
    }
}
