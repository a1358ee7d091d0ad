/// Values by request cookie (proto.md, "Transmission phase": the client
/// picks each request's cookie and the server echoes it), for what a client
/// tracks per request in flight.
///
/// A `Dictionary` hashes every key with SipHash: about ten hashes per
/// request between registering it, decoding its reply and completing it,
/// which was about 7% of the crypt domain's CPU on fragmented reads (one
/// storage request per few blocks). Here the home slot is the cookie's low
/// bits and collisions probe linearly, so the sequential cookies a client
/// hands out land in their own slots with no hashing at all. Any cookie
/// works; other patterns only probe further.
/// A removed entry leaves a marker that lookups pass over, so removal
/// costs nothing (shifting entries back would rescan the whole run of
/// consecutive cookies in flight on every reply); markers are cleared when
/// markers and entries together fill three quarters of the table. A
/// rebuild leaves the entries at most an eighth of the table: sequential
/// cookies never land on an old marker, so every reply leaves one, and a
/// table the entries half filled was rebuilt every few requests (6% of
/// the crypt domain's CPU on 4k reads, mostly in allocating its arrays);
/// a rebuild at the same size reuses the arrays.
///
/// Only the client inserts. A cookie that comes from the server is only
/// looked up, and a lookup stops at the first empty slot, of which there is
/// always a quarter of the table.
///
/// The methods are `@inlinable` so that callers in other modules get code
/// specialised for their value type, not generic code.
public struct CookieTable<Value> {
    @usableFromInline static var empty: UInt8 { 0 }
    @usableFromInline static var used: UInt8 { 1 }
    @usableFromInline static var removed: UInt8 { 2 }

    // Parallel arrays by slot: a lookup touches only the first two.
    @usableFromInline var states: [UInt8]
    @usableFromInline var keys: [UInt64]
    @usableFromInline var values: [Value?]
    /// Entries on their way through `rebuild`; empty otherwise.
    @usableFromInline var scratch: [(UInt64, Value)] = []
    @usableFromInline var removedCount = 0
    @usableFromInline var storedCount = 0

    /// Entries in the table.
    @inlinable public var count: Int { storedCount }

    /// The capacity a new table starts with; it doubles as needed.
    public static var initialCapacity: Int { 64 }

    /// Slots per entry a rebuild leaves at least.
    @usableFromInline static var sparseness: Int { 8 }

    public init() {
        self.init(capacity: Self.initialCapacity)
    }

    @usableFromInline init(capacity: Int) {
        states = Array(repeating: Self.empty, count: capacity)
        keys = Array(repeating: 0, count: capacity)
        values = Array(repeating: nil, count: capacity)
    }

    @inlinable public var isEmpty: Bool { count == 0 }

    /// The cookies in the table, in no particular order.
    public var cookies: [UInt64] { states.indices.filter { states[$0] == Self.used }.map { keys[$0] } }

    /// The values in the table, in no particular order, without copying
    /// them into an array.
    public var allValues: some Sequence<Value> { values.lazy.compactMap { $0 } }

    @inlinable public func contains(_ cookie: UInt64) -> Bool { find(cookie) != nil }

    /// The slot holding `cookie`, if any.
    @inlinable func find(_ cookie: UInt64) -> Int? {
        let mask = states.count - 1
        var index = Int(truncatingIfNeeded: cookie) & mask
        while true {
            let state = states[index]
            if state == Self.empty { return nil }
            if state == Self.used, keys[index] == cookie { return index }
            index = (index + 1) & mask
        }
    }

    /// The value for `cookie`, if any.
    @inlinable public subscript(cookie: UInt64) -> Value? {
        find(cookie).map { values[$0]! }
    }

    /// Runs `body` on the value for `cookie` in place; nil if there is none.
    @inlinable public mutating func update<R>(_ cookie: UInt64, _ body: (inout Value) -> R) -> R? {
        guard let index = find(cookie) else { return nil }
        return body(&values[index]!)
    }

    /// Adds `value` for `cookie`, which must not be in the table (a client
    /// never reuses a cookie while its request is in flight).
    @inlinable public mutating func insert(_ value: Value, for cookie: UInt64) {
        assert(!contains(cookie), "cookie \(cookie) is already in the table")
        if (count + removedCount + 1) * 4 > states.count * 3 { rebuild() }
        let mask = states.count - 1
        var index = Int(truncatingIfNeeded: cookie) & mask
        while states[index] == Self.used { index = (index + 1) & mask }
        if states[index] == Self.removed { removedCount -= 1 }
        states[index] = Self.used
        keys[index] = cookie
        values[index] = value
        storedCount += 1
    }

    /// Removes and returns the value for `cookie`, if any.
    @inlinable @discardableResult
    public mutating func removeValue(for cookie: UInt64) -> Value? {
        guard let index = find(cookie) else { return nil }
        let removed = values[index].take()
        states[index] = Self.removed
        removedCount += 1
        storedCount -= 1
        return removed
    }

    /// Re-inserts every entry into a table without markers, grown until
    /// the entries fill at most an eighth of it: the next rebuild is then
    /// at least five times as many insertions away as there are entries.
    /// At the same size the arrays are reused: the entries wait in
    /// `scratch` while the slots are emptied, so a rebuild allocates
    /// nothing and writes no value slot but the entries'.
    @usableFromInline mutating func rebuild() {
        var capacity = states.count
        while capacity < Self.sparseness * (count + 1) { capacity *= 2 }
        for index in states.indices where states[index] == Self.used {
            scratch.append((keys[index], values[index].take()!))
        }
        if capacity == states.count {
            for index in states.indices { states[index] = Self.empty }
        } else {
            states = Array(repeating: Self.empty, count: capacity)
            keys = Array(repeating: 0, count: capacity)
            values = Array(repeating: nil, count: capacity)
        }
        removedCount = 0
        storedCount = 0
        for (cookie, value) in scratch { insert(value, for: cookie) }
        scratch.removeAll(keepingCapacity: true)
    }
}

extension CookieTable: Sendable where Value: Sendable {}
