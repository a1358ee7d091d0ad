import Foundation
import Testing

import Threads

/// The cache of large buffers that keeps sealed-write buffers out of the
/// malloc heap: reused, and never holding more than its bound.
@Suite struct BufferCacheTests {
    @Test func aGivenBackBufferIsReusedForTheSameSize() {
        let cache = BufferCache(retainedBytes: 4 << 20, alignment: 64)
        let first = cache.take(1 << 20)
        #expect(first.count == 1 << 20)
        cache.give(first)
        #expect(cache.idle.count == 1)
        let second = cache.take(1 << 20)
        #expect(second.baseAddress == first.baseAddress)
        #expect(cache.idle.count == 0)
        cache.give(second)
    }

    @Test func nearbySizesShareAPowerOfTwo() {
        let cache = BufferCache(retainedBytes: 4 << 20, alignment: 64)
        let buffer = cache.take(768 << 10)
        #expect(buffer.count == 1 << 20)
        cache.give(buffer)
        #expect(cache.take(600 << 10).baseAddress == buffer.baseAddress)
    }

    @Test func idleBuffersStayWithinTheBound() {
        let cache = BufferCache(retainedBytes: 3 << 20, alignment: 64)
        let buffers = (0..<8).map { _ in cache.take(1 << 20) }
        for buffer in buffers { cache.give(buffer) }
        #expect(cache.idle.count == 3)
        #expect(cache.idle.bytes == 3 << 20)
        // The newest are kept: the oldest went to make room.
        #expect(cache.take(1 << 20).baseAddress == buffers[7].baseAddress)
    }

    @Test func buffersFromTheMappingSizeOnAreMappingsOfTheirOwn() throws {
        let cache = BufferCache(retainedBytes: 4 << 20, alignment: 64, smallest: 4096, mappedFrom: 128 << 10)
        #expect(!cache.isMapped(64 << 10))
        #expect(cache.isMapped(128 << 10))
        let mapped = cache.take(200_000)
        #expect(mapped.count == 256 << 10)
        // Page-aligned and outside malloc's heap.
        let start = UInt(bitPattern: mapped.baseAddress)
        #expect(start % 4096 == 0)
        let maps = try String(contentsOfFile: "/proc/self/maps", encoding: .utf8)
        for line in maps.split(separator: "\n") where line.hasSuffix("[heap]") {
            let bounds = line.split(separator: " ")[0].split(separator: "-").compactMap { UInt($0, radix: 16) }
            #expect(!(bounds[0]..<bounds[1]).contains(start), "the buffer lies in the heap")
        }
        mapped.initializeMemory(as: UInt8.self, repeating: 7)
        cache.give(mapped)
        let again = cache.take(256 << 10)
        #expect(again.baseAddress == mapped.baseAddress)
        cache.give(again)
        // Past the bound, mapped buffers are unmapped, not kept.
        let huge = cache.take(16 << 20)
        #expect(cache.isMapped(huge.count))
        cache.give(huge)
        #expect(cache.idle.bytes == 256 << 10)
    }

    @Test func smallAndHugeBuffersAreNotKept() {
        let cache = BufferCache(retainedBytes: 64 << 20, alignment: 64)
        let small = cache.take(4096)
        #expect(small.count == 4096)
        cache.give(small)
        let huge = cache.take(BufferCache.largestCached + 1)
        #expect(huge.count == BufferCache.largestCached + 1)
        cache.give(huge)
        #expect(cache.idle.count == 0)
    }

    @Test func aCacheOfOneBlockBuffersKeepsThem() {
        let cache = BufferCache(retainedBytes: 1 << 20, alignment: 64, smallest: 4096)
        let block = cache.take(4096)
        #expect(block.count == 4096)
        cache.give(block)
        #expect(cache.idle.count == 1)
        #expect(cache.take(4096).baseAddress == block.baseAddress)
        let three = cache.take(3 * 4096)
        #expect(three.count == 4 * 4096)
        cache.give(three)
        cache.give(block)
        #expect(cache.idle.count == 2)
        #expect(cache.idle.bytes == 5 * 4096)
    }

    @Test func roomIsMadeFromTheLargestIdleBuffersFirst() {
        let cache = BufferCache(retainedBytes: (1 << 20) + 4096, alignment: 64, smallest: 4096)
        let large = cache.take(1 << 20)
        let small = (0..<2).map { _ in cache.take(4096) }
        cache.give(large)
        cache.give(small[0])
        #expect(cache.idle.bytes == (1 << 20) + 4096)
        cache.give(small[1])
        #expect(cache.idle.count == 2)
        #expect(cache.idle.bytes == 2 * 4096)
        #expect(cache.take(4096).baseAddress == small[1].baseAddress)
    }
}
