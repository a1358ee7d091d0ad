import BlockDevice
import Foundation
import Keys
import PoolFormat
import Testing

@testable import CryptPool

/// The cost of one write, and of replaying one log record at open, must not
/// grow with the number of blocks written since the last checkpoint.
///
/// Found by bench/chain (bench/CHAIN.md): `Volume.writePlain` and the log
/// replay in `Pool.load` copy a volume's `VolumeState` out of the
/// dictionary, insert into the copy's overlay and store it back. The copy
/// shares the overlay's storage, so the insertion copies the whole overlay
/// (retaining every pointer's tag and salt arrays) and the store frees the
/// old one: O(overlay) per write, O(records²) per open.
@Suite struct OverlayScalingTests {
    /// Seconds per call of `body`, for each of `count` calls.
    private func durations(_ count: Int, _ body: (Int) throws -> Void) rethrows -> [Double] {
        var result: [Double] = []
        result.reserveCapacity(count)
        for index in 0..<count {
            let start = monotonicNow()
            try body(index)
            result.append(monotonicNow() - start)
        }
        return result
    }

    private func monotonicNow() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    private func median(_ values: ArraySlice<Double>) -> Double {
        let sorted = values.sorted()
        return sorted[sorted.count / 2]
    }

    @Test func singleBlockWriteCostDoesNotGrowWithTheOverlay() throws {
        let (_, _, volume) = try poolWithVolume(configuration: PoolConfiguration(checkpointRecords: 1_000_000))
        let block = randomBytes(4096, seed: 7)
        let writes = 16_000
        let times = try durations(writes) { index in try write(volume, UInt64(index) * 4096, block) }
        // Medians, so a preempted write on a busy machine does not count.
        let early = median(times[0..<1000])
        let late = median(times[(writes - 1000)..<writes])
        #expect(late / early < 2.5, "median 4 KiB write took \(late * 1e6) µs with ~15,500 overlay entries, \(early * 1e6) µs with ~500")
    }

    @Test func openTimeIsLinearInTheLog() throws {
        func openSeconds(records: Int) throws -> Double {
            let configuration = PoolConfiguration(checkpointRecords: 1_000_000)
            let (device, _, volume) = try poolWithVolume(configuration: configuration)
            // One request per 256 blocks keeps the setup itself cheap.
            let chunk = randomBytes(256 * 4096, seed: 9)
            for first in stride(from: 0, to: records, by: 256) {
                try write(volume, UInt64(first) * 4096, Array(chunk[0..<(min(256, records - first) * 4096)]))
            }
            try volume.flush()
            let start = monotonicNow()
            let reopened = try Pool.open(
                storage: device, secret: .passphrase(passphrase), anchor: nil, configuration: configuration)
            let seconds = monotonicNow() - start
            #expect(reopened.summary().logRecords == UInt64(records))
            return seconds
        }
        let small = try openSeconds(records: 2_000)
        let large = try openSeconds(records: 16_000)
        // Linear replay: about 8x (less, with the fixed cost of an open); quadratic: about 64x.
        #expect(large / small < 16, "open took \(large) s with 16,000 log records, \(small) s with 2,000")
    }
}
