import PoolFormat

/// The pool's volumes, by ID: an array sorted by ID, searched by bisection.
///
/// Every READ and WRITE reaches its volume's state in place under the state
/// lock (`update`). A Dictionary gives in-place access only through its
/// `modify` accessors, three nested coroutines the optimizer does not
/// inline, each of which allocates its frame: three mallocs per access,
/// 5.5 of the 21 a 4 KiB WRITE cost the crypt domain (counted with a
/// uprobe on malloc). An array element is reached through an address.
struct VolumeStates: Sendable {
    /// Sorted by ID, no two alike.
    private(set) var values: [VolumeState] = []

    var count: Int { values.count }
    var isEmpty: Bool { values.isEmpty }
    /// The IDs, ascending.
    var ids: [VolumeID] { values.map(\.id) }

    /// A copy of volume `id`'s state; nil if there is none. The copy shares
    /// the overlay tables: a change made while it is held copies them, so
    /// changes go through `update`.
    subscript(id: VolumeID) -> VolumeState? {
        position(of: id).found.map { values[$0] }
    }

    /// Runs `body` on volume `id`'s state where it lies; nil, without
    /// running it, if there is no such volume.
    mutating func update<T, E: Error>(_ id: VolumeID, _ body: (inout VolumeState) throws(E) -> T) throws(E) -> T? {
        guard let index = position(of: id).found else { return nil }
        return try body(&values[index])
    }

    /// Runs `body` on every volume's state in place, in ID order.
    mutating func updateEach(_ body: (inout VolumeState) -> Void) {
        for index in values.indices { body(&values[index]) }
    }

    /// Adds a volume, or replaces the one with its ID.
    mutating func insert(_ volume: VolumeState) {
        let (found, insertion) = position(of: volume.id)
        if let found {
            values[found] = volume
        } else {
            values.insert(volume, at: insertion)
        }
    }

    /// Removes volume `id` and returns its state; nil if there was none.
    @discardableResult
    mutating func remove(_ id: VolumeID) -> VolumeState? {
        guard let index = position(of: id).found else { return nil }
        return values.remove(at: index)
    }

    /// Where `id` is (`found`), or where it would go to keep the order.
    private func position(of id: VolumeID) -> (found: Int?, insertion: Int) {
        var low = 0
        var high = values.count
        while low < high {
            let middle = (low + high) / 2
            if values[middle].id < id { low = middle + 1 } else { high = middle }
        }
        return (low < values.count && values[low].id == id ? low : nil, low)
    }
}
