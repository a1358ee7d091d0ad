/// A TOML value of the subset the boot manifest uses (docs/toolstack.md,
/// "Manifest"): basic and literal strings, integers, booleans, arrays of
/// these, tables and arrays of tables. Every value remembers its line.
public indirect enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int64)
    case boolean(Bool)
    case array([TOMLValue])
    case table(TOMLTable)

    /// The TOML type name, for "expected a string, found an integer".
    public var typeName: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .boolean: "a boolean"
        case .array: "an array"
        case .table: "a table"
        }
    }
}

/// A table: keys in file order, each with its value and the line it was set on.
public struct TOMLTable: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var key: String
        public var value: TOMLValue
        public var line: Int
    }

    public internal(set) var entries: [Entry] = []
    /// The line of the table's header (0 for the root table).
    public internal(set) var line: Int

    init(line: Int) { self.line = line }

    public subscript(key: String) -> Entry? { entries.first { $0.key == key } }

    fileprivate mutating func set(_ key: String, _ value: TOMLValue, line: Int) {
        if let index = entries.firstIndex(where: { $0.key == key }) {
            entries[index] = Entry(key: key, value: value, line: line)
        } else {
            entries.append(Entry(key: key, value: value, line: line))
        }
    }
}

/// A syntax error: the line and what was wrong there.
public struct TOMLSyntaxError: Error, Sendable, Equatable {
    public var line: Int
    public var message: String

    public init(line: Int, message: String) {
        self.line = line
        self.message = message
    }
}

/// Parses TOML text of the subset above into its root table.
public func parseTOML(_ text: String) throws(TOMLSyntaxError) -> TOMLTable {
    var parser = TOMLParser(text: Array(text.utf8))
    return try parser.parseDocument()
}

/// Limits on untrusted manifest text, checked before anything grows.
enum TOMLLimits {
    static let maximumBytes = 1 << 20
    static let maximumDepth = 8
}

private struct TOMLParser {
    let text: [UInt8]
    var position = 0
    var line = 1
    var root = TOMLTable(line: 0)
    // The header path currently being filled; an array-of-tables element is
    // addressed as its last element.
    var current: [String] = []
    // Tables defined by a [header], to refuse a second definition.
    var definedTables: Set<[String]> = []

    init(text: [UInt8]) { self.text = text }

    mutating func parseDocument() throws(TOMLSyntaxError) -> TOMLTable {
        guard text.count <= TOMLLimits.maximumBytes else { throw fail("the file is larger than \(TOMLLimits.maximumBytes) bytes") }
        while true {
            skipBlankAndComments()
            guard let byte = peek() else { return root }
            if byte == UInt8(ascii: "[") {
                try parseHeader()
            } else {
                try parseKeyValue()
            }
            try endOfLine()
        }
    }

    // MARK: Structure

    mutating func parseHeader() throws(TOMLSyntaxError) {
        let headerLine = line
        position += 1
        let isArray = peek() == UInt8(ascii: "[")
        if isArray { position += 1 }
        skipSpaces()
        let path = try parseKeyPath()
        skipSpaces()
        guard expect("]") else { throw fail("expected ']' to close the table header") }
        if isArray { guard expect("]") else { throw fail("expected ']]' to close the array-of-tables header") } }
        guard path.count <= TOMLLimits.maximumDepth else { throw fail("table nesting deeper than \(TOMLLimits.maximumDepth)") }
        if isArray {
            try modify(path: Array(path.dropLast()), line: headerLine) { (table: inout TOMLTable) throws(TOMLSyntaxError) in
                let key = path.last!
                var elements: [TOMLValue] = []
                if let existing = table[key] {
                    guard case .array(let values) = existing.value, values.allSatisfy({ if case .table = $0 { true } else { false } }) else {
                        throw TOMLSyntaxError(line: headerLine, message: "\"\(path.joined(separator: "."))\" is already defined as a value")
                    }
                    elements = values
                }
                elements.append(.table(TOMLTable(line: headerLine)))
                table.set(key, .array(elements), line: table[key]?.line ?? headerLine)
            }
        } else {
            guard definedTables.insert(path).inserted else { throw fail("table [\(path.joined(separator: "."))] is defined twice") }
            try modify(path: path, line: headerLine) { (_: inout TOMLTable) throws(TOMLSyntaxError) in }
        }
        current = path
    }

    mutating func parseKeyValue() throws(TOMLSyntaxError) {
        let entryLine = line
        let keys = try parseKeyPath()
        skipSpaces()
        guard expect("=") else { throw fail("expected '=' after the key \"\(keys.joined(separator: "."))\"") }
        skipSpaces()
        let value = try parseValue(depth: 0)
        let path = current + keys.dropLast()
        let key = keys.last!
        try modify(path: path, line: entryLine) { (table: inout TOMLTable) throws(TOMLSyntaxError) in
            guard table[key] == nil else {
                throw TOMLSyntaxError(line: entryLine, message: "the key \"\(keys.joined(separator: "."))\" is set twice")
            }
            table.set(key, value, line: entryLine)
        }
    }

    /// Walks `path` from the root, creating tables, entering the last element
    /// of arrays of tables, and applies `body` to the table reached.
    mutating func modify(
        path: [String], line: Int, _ body: (inout TOMLTable) throws(TOMLSyntaxError) -> Void
    ) throws(TOMLSyntaxError) {
        try Self.modify(&root, path: path[...], line: line, body)
    }

    static func modify(
        _ table: inout TOMLTable, path: ArraySlice<String>, line: Int,
        _ body: (inout TOMLTable) throws(TOMLSyntaxError) -> Void
    ) throws(TOMLSyntaxError) {
        guard let key = path.first else { return try body(&table) }
        let rest = path.dropFirst()
        switch table[key]?.value {
        case nil:
            var child = TOMLTable(line: line)
            try modify(&child, path: rest, line: line, body)
            table.set(key, .table(child), line: line)
        case .table(var child):
            try modify(&child, path: rest, line: line, body)
            table.set(key, .table(child), line: table[key]!.line)
        case .array(var elements):
            guard case .table(var last)? = elements.last else {
                throw TOMLSyntaxError(line: line, message: "\"\(key)\" is a value, not a table")
            }
            try modify(&last, path: rest, line: line, body)
            elements[elements.count - 1] = .table(last)
            table.set(key, .array(elements), line: table[key]!.line)
        case .some:
            throw TOMLSyntaxError(line: line, message: "\"\(key)\" is a value, not a table")
        }
    }

    // MARK: Keys and values

    mutating func parseKeyPath() throws(TOMLSyntaxError) -> [String] {
        var keys: [String] = []
        while true {
            skipSpaces()
            keys.append(try parseKey())
            skipSpaces()
            guard peek() == UInt8(ascii: ".") else { return keys }
            position += 1
        }
    }

    mutating func parseKey() throws(TOMLSyntaxError) -> String {
        if peek() == UInt8(ascii: "\"") { return try parseBasicString() }
        if peek() == UInt8(ascii: "'") { return try parseLiteralString() }
        let start = position
        while let byte = peek(), isBareKeyByte(byte) { position += 1 }
        guard position > start else { throw fail("expected a key") }
        return String(decoding: text[start..<position], as: UTF8.self)
    }

    mutating func parseValue(depth: Int) throws(TOMLSyntaxError) -> TOMLValue {
        guard depth <= TOMLLimits.maximumDepth else { throw fail("arrays nested deeper than \(TOMLLimits.maximumDepth)") }
        guard let byte = peek() else { throw fail("expected a value") }
        switch byte {
        case UInt8(ascii: "\""): return .string(try parseBasicString())
        case UInt8(ascii: "'"): return .string(try parseLiteralString())
        case UInt8(ascii: "["): return try parseArray(depth: depth)
        case UInt8(ascii: "t"), UInt8(ascii: "f"):
            if consume("true") { return .boolean(true) }
            if consume("false") { return .boolean(false) }
            throw fail("expected a value")
        case UInt8(ascii: "{"):
            throw fail("inline tables are not supported here; use a [table] header")
        default:
            return .integer(try parseInteger())
        }
    }

    mutating func parseInteger() throws(TOMLSyntaxError) -> Int64 {
        let start = position
        if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { position += 1 }
        while let byte = peek(), isBareKeyByte(byte) || byte == UInt8(ascii: ".") { position += 1 }
        let word = String(decoding: text[start..<position], as: UTF8.self)
        let digits = word.replacingUnderscores()
        guard !word.isEmpty, let value = Int64(digits) else {
            throw fail(word.isEmpty ? "expected a value" : "\"\(word)\" is not a value this manifest accepts (strings are quoted)")
        }
        return value
    }

    mutating func parseArray(depth: Int) throws(TOMLSyntaxError) -> TOMLValue {
        position += 1
        var elements: [TOMLValue] = []
        while true {
            skipBlankAndComments()
            if expect("]") { return .array(elements) }
            elements.append(try parseValue(depth: depth + 1))
            skipBlankAndComments()
            if expect(",") { continue }
            guard expect("]") else { throw fail("expected ',' or ']' in the array") }
            return .array(elements)
        }
    }

    mutating func parseBasicString() throws(TOMLSyntaxError) -> String {
        position += 1
        var bytes: [UInt8] = []
        while true {
            guard let byte = peek(), byte != UInt8(ascii: "\n") else { throw fail("unterminated string") }
            position += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: bytes, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard let escaped = peek() else { throw fail("unterminated string") }
                position += 1
                switch escaped {
                case UInt8(ascii: "\""): bytes.append(UInt8(ascii: "\""))
                case UInt8(ascii: "\\"): bytes.append(UInt8(ascii: "\\"))
                case UInt8(ascii: "n"): bytes.append(10)
                case UInt8(ascii: "t"): bytes.append(9)
                case UInt8(ascii: "r"): bytes.append(13)
                default: throw fail("unsupported escape \"\\\(Character(Unicode.Scalar(escaped)))\" in a string")
                }
            default:
                guard byte >= 0x20 || byte == 9 else { throw fail("control character in a string") }
                bytes.append(byte)
            }
        }
    }

    mutating func parseLiteralString() throws(TOMLSyntaxError) -> String {
        position += 1
        let start = position
        while let byte = peek(), byte != UInt8(ascii: "'") {
            guard byte != UInt8(ascii: "\n") else { throw fail("unterminated string") }
            position += 1
        }
        guard peek() != nil else { throw fail("unterminated string") }
        let value = String(decoding: text[start..<position], as: UTF8.self)
        position += 1
        return value
    }

    // MARK: Lexical helpers

    func peek() -> UInt8? { position < text.count ? text[position] : nil }

    func isBareKeyByte(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
            || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
    }

    mutating func expect(_ character: Unicode.Scalar) -> Bool {
        guard peek() == UInt8(character.value) else { return false }
        position += 1
        return true
    }

    mutating func consume(_ word: String) -> Bool {
        let bytes = Array(word.utf8)
        guard position + bytes.count <= text.count, Array(text[position..<position + bytes.count]) == bytes else { return false }
        position += bytes.count
        return true
    }

    mutating func skipSpaces() {
        while let byte = peek(), byte == UInt8(ascii: " ") || byte == 9 { position += 1 }
    }

    /// Skips spaces, comments and newlines (counting lines).
    mutating func skipBlankAndComments() {
        while let byte = peek() {
            if byte == UInt8(ascii: " ") || byte == 9 || byte == 13 {
                position += 1
            } else if byte == 10 {
                position += 1
                line += 1
            } else if byte == UInt8(ascii: "#") {
                while let next = peek(), next != 10 { position += 1 }
            } else {
                return
            }
        }
    }

    /// After a header or a key/value: only spaces and a comment until the newline.
    mutating func endOfLine() throws(TOMLSyntaxError) {
        skipSpaces()
        if peek() == UInt8(ascii: "#") { while let next = peek(), next != 10 { position += 1 } }
        if peek() == 13 { position += 1 }
        guard let byte = peek() else { return }
        guard byte == 10 else { throw fail("unexpected text after the value") }
    }

    func fail(_ message: String) -> TOMLSyntaxError { TOMLSyntaxError(line: line, message: message) }
}

extension String {
    fileprivate func replacingUnderscores() -> String { String(filter { $0 != "_" }) }
}
