/// The canonical configuration of a domain launch (docs/toolstack.md,
/// "What is measured"): UTF-8 text, one `name=value` line per field in
/// this fixed order, each ending in "\n":
///
///     bulkhead-launch v1
///     domain=<storage|crypt>
///     user=<uid or user name as written in the manifest>
///     sandbox=<true|false>
///     seccomp=<comma-separated allowlist, sorted; empty without sandbox>
///     arg=<argv[0]>            one line per argument, in order
///     grant=<ro|rw|dev>:<path> one line per sandbox grant, in order
///
/// Values escape "\\" as "\\\\" and a newline as "\\n", so the text splits
/// back into its lines. The form depends on what the domain runs with, not
/// on the manifest's spelling: comments, key order and spacing do not
/// change it; any argument, grant, user or allowlist change does.
public func canonicalConfiguration(of launch: DomainLaunch, seccompAllowlist: [String]) -> String {
    var lines = ["bulkhead-launch v1", "domain=\(launch.role.rawValue)", "user=\(escape(launch.user.description))"]
    lines.append("sandbox=\(launch.sandboxed)")
    lines.append("seccomp=" + (launch.sandboxed ? seccompAllowlist.sorted().joined(separator: ",") : ""))
    lines += launch.arguments.map { "arg=\(escape($0))" }
    lines += launch.grants.map { "grant=\($0.access.rawValue):\(escape($0.path))" }
    return lines.map { $0 + "\n" }.joined()
}

private func escape(_ value: String) -> String {
    var escaped = ""
    for character in value {
        switch character {
        case "\\": escaped += "\\\\"
        case "\n": escaped += "\\n"
        default: escaped.append(character)
        }
    }
    return escaped
}
