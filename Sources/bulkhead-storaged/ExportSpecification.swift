/// One `--export NAME=PATH[:ro]` argument.
struct ExportSpecification: Equatable {
    var name: String
    var path: String
    var readOnly: Bool

    struct SyntaxError: Error, CustomStringConvertible {
        var text: String
        var why: String
        var description: String { "bad --export \"\(text)\": \(why); expected NAME=PATH or NAME=PATH:ro" }
    }

    /// Parses `NAME=PATH`, `NAME=PATH:ro` or `NAME=PATH:rw`. The name ends
    /// at the first `=`; only a final `:ro`/`:rw` is an option, so paths may
    /// contain colons.
    init(parsing text: String) throws(SyntaxError) {
        guard let equals = text.firstIndex(of: "=") else { throw SyntaxError(text: text, why: "no \"=\"") }
        name = String(text[..<equals])
        var path = String(text[text.index(after: equals)...])
        readOnly = false
        if path.hasSuffix(":ro") {
            readOnly = true
            path.removeLast(3)
        } else if path.hasSuffix(":rw") {
            path.removeLast(3)
        }
        guard !name.isEmpty else { throw SyntaxError(text: text, why: "empty export name") }
        guard name.utf8.count <= 4096 else { throw SyntaxError(text: text, why: "export name longer than 4096 bytes") }
        guard !path.isEmpty else { throw SyntaxError(text: text, why: "empty path") }
        self.path = path
    }
}
