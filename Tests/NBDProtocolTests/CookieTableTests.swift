@testable import NBDProtocol
import TestSupport
import Testing

/// `CookieTable` against a `Dictionary` doing the same operations, and the
/// patterns a client's cookies actually follow.
struct CookieTableTests {
    /// Random inserts, lookups of present and absent cookies, in-place
    /// updates and removals agree with a dictionary at every step.
    @Test func agreesWithDictionary() {
        var generator = SeededGenerator(seed: 7)
        var table = CookieTable<Int>()
        var model: [UInt64: Int] = [:]
        var nextSequential: UInt64 = 1
        for step in 0..<40_000 {
            switch generator.next() % 6 {
            case 0, 1:
                // Mostly the client's sequential cookies, some arbitrary and
                // some sharing their low bits (the same home slot).
                let kind = generator.next() % 4
                var cookie = kind == 0 ? generator.next() : kind == 1 ? (generator.next() % 8) << 20 : nextSequential
                if kind > 1 { nextSequential += 1 }
                while model[cookie] != nil { cookie &+= 1 }
                table.insert(step, for: cookie)
                model[cookie] = step
            case 2, 3:
                guard let cookie = model.keys.randomElement(using: &generator) else { continue }
                #expect(table.removeValue(for: cookie) == model.removeValue(forKey: cookie))
            case 4:
                let cookie = generator.next() % 2 == 0 ? (model.keys.randomElement(using: &generator) ?? 0) : generator.next()
                #expect(table[cookie] == model[cookie])
                #expect(table.contains(cookie) == (model[cookie] != nil))
            default:
                guard let cookie = model.keys.randomElement(using: &generator) else { continue }
                #expect(table.update(cookie) { value -> Int in
                    value += 1
                    return value
                } == model[cookie]! + 1)
                model[cookie]! += 1
            }
            #expect(table.count == model.count)
        }
        #expect(Set(table.cookies) == Set(model.keys))
        #expect(Set(table.allValues) == Set(model.values))
        #expect(table.removeValue(for: .max) == nil)
    }

    /// A client's pattern: sequential cookies, a window of them in flight,
    /// the oldest answered first, for many laps of the table. Every lookup
    /// hits, and the table stays sized by the window, not by the cookies
    /// ever used: removal markers are cleared rather than piling up.
    @Test func slidingWindowOfSequentialCookies() {
        var table = CookieTable<UInt64>()
        let window: UInt64 = 800
        for cookie: UInt64 in 1...30_000 {
            table.insert(cookie &* 3, for: cookie)
            if cookie > window {
                let oldest = cookie - window
                #expect(table[oldest] == oldest &* 3)
                #expect(table.removeValue(for: oldest) == oldest &* 3)
                #expect(table[oldest] == nil)
            }
        }
        #expect(table.count == Int(window))
        #expect(table.states.count <= 2 * CookieTable<UInt64>.sparseness * Int(window))
        #expect(table[30_000 - window] == nil && table[30_000 - window + 1] != nil)
    }

    /// A window of 32 (a queue depth of 32): a rebuild leaves the entries
    /// an eighth of the table at most, so the markers every reply leaves
    /// take many requests to bring on the next one, where a table kept
    /// half full was rebuilt every 16 requests.
    @Test func rebuildsOfASmallWindowAreFarApart() {
        var table = CookieTable<UInt64>()
        var rebuilds = 0
        let window: UInt64 = 32
        for cookie: UInt64 in 1...20_000 {
            let before = (table.states.count, table.removedCount)
            table.insert(cookie, for: cookie)
            // A rebuild clears the markers; an insertion alone removes at most one.
            if table.removedCount < before.1 - 1 || table.states.count != before.0 { rebuilds += 1 }
            if cookie > window { table.removeValue(for: cookie - window) }
        }
        #expect(table.states.count >= CookieTable<UInt64>.sparseness * Int(window))
        // Each rebuild is followed by at least (3/4 - 1/8) of the table's insertions.
        #expect(rebuilds <= 20_000 / 150)
        #expect(rebuilds >= 2)
    }

    /// Cookies a hostile server sends are only looked up: every lookup of
    /// an absent cookie ends (the table always keeps empty slots), and
    /// never changes what is in the table.
    @Test func lookupsOfUnknownCookiesEnd() {
        var table = CookieTable<Int>()
        for cookie: UInt64 in 0..<40 { table.insert(Int(cookie), for: cookie * UInt64(CookieTable<Int>.initialCapacity)) }
        for cookie: UInt64 in 0..<40 { _ = table.removeValue(for: cookie * 64 + (cookie % 2 == 0 ? 0 : 64 * 100)) }
        var generator = SeededGenerator(seed: 3)
        for _ in 0..<10_000 {
            let cookie = generator.next() | 1
            #expect(table[cookie] == nil)
        }
        #expect(table.count == 20)
        #expect(table.states.contains(CookieTable<Int>.empty))
    }
}
