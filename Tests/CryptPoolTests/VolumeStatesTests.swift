import PoolFormat
import Testing

@testable import CryptPool

/// The pool's volumes by ID (VolumeStates.swift): kept in ID order
/// whatever order they arrive in, changed in place, and a missing ID found
/// missing rather than next to it.
@Suite struct VolumeStatesTests {
    func volume(_ id: UInt32, _ name: String) -> VolumeState {
        VolumeState(
            id: VolumeID(rawValue: id), name: name, size: 1 << 20, depth: 1, root: .null, key: .generate())
    }

    @Test func keepsIDOrderAndFindsEachVolume() {
        var volumes = VolumeStates()
        for (id, name) in [(7, "g"), (2, "b"), (9, "i"), (4, "d"), (1, "a")] { volumes.insert(volume(UInt32(id), name)) }
        #expect(volumes.ids.map(\.rawValue) == [1, 2, 4, 7, 9])
        #expect(volumes.values.map(\.name) == ["a", "b", "d", "g", "i"])
        #expect(volumes.count == 5)
        for (id, name) in [(1, "a"), (2, "b"), (4, "d"), (7, "g"), (9, "i")] {
            #expect(volumes[VolumeID(rawValue: UInt32(id))]?.name == name)
        }
        for missing in [0, 3, 5, 8, 10] { #expect(volumes[VolumeID(rawValue: UInt32(missing))] == nil) }
    }

    @Test func insertReplacesTheVolumeWithItsID() {
        var volumes = VolumeStates()
        volumes.insert(volume(3, "old"))
        volumes.insert(volume(3, "new"))
        #expect(volumes.count == 1)
        #expect(volumes[VolumeID(rawValue: 3)]?.name == "new")
    }

    @Test func updateChangesInPlaceAndSkipsAMissingVolume() {
        var volumes = VolumeStates()
        volumes.insert(volume(1, "a"))
        volumes.insert(volume(5, "e"))
        let replaced = volumes.update(VolumeID(rawValue: 5)) { state -> Int in
            var dropped: [PhysicalBlock] = []
            state.overlay.map(from: 10, to: [BlockPointer(block: 900, salt: .zero, counter: NonceCounter(rawValue: 1), generation: 1, tag: .zero)], replaced: &dropped)
            return dropped.count
        }
        #expect(replaced == 0)
        #expect(volumes[VolumeID(rawValue: 5)]?.overlay.lookup(10)?.block == 900)
        #expect(volumes[VolumeID(rawValue: 1)]?.overlay.isEmpty == true)
        var ran = false
        #expect(volumes.update(VolumeID(rawValue: 3)) { _ in ran = true } == nil)
        #expect(!ran)
    }

    @Test func removeTakesOnlyThatVolume() {
        var volumes = VolumeStates()
        for id in [1, 2, 3] { volumes.insert(volume(UInt32(id), "v\(id)")) }
        #expect(volumes.remove(VolumeID(rawValue: 2))?.name == "v2")
        #expect(volumes.remove(VolumeID(rawValue: 2)) == nil)
        #expect(volumes.ids.map(\.rawValue) == [1, 3])
        volumes.updateEach { $0.size *= 2 }
        #expect(volumes.values.allSatisfy { $0.size == 2 << 20 })
    }
}
