import PoolFormat

/// The allocator's view of the pool: one bit per physical block, set when
/// the block may not be handed out (docs/format.md, section 8.3). A block
/// is in use while the durable state references it, while a write in
/// flight or an uncommitted change holds it, and after it is freed until
/// the commit that frees it is durable.
struct SpaceMap {
    let blockCount: UInt64
    private(set) var words: [UInt64]
    private(set) var usedCount: UInt64 = 0
    /// Next-fit cursor: allocation continues where it left off, which keeps
    /// consecutive writes contiguous and spreads wear.
    private var cursor: UInt64
    /// Where the search for free extents (`extentBlocks` free blocks in a
    /// row) continues; apart from `cursor`, so that single blocks fill the
    /// holes overwrites leave while large writes pass them by.
    private var extentCursor: UInt64

    /// Requests of this many blocks or more are placed in free extents of at
    /// least this length where any are left: 64 KiB, so that a 1 MiB write,
    /// and every later read of it, costs at most 16 storage requests however
    /// scattered the free space random overwrites have left (a pool with
    /// free space in single-block holes would otherwise cost one per block).
    static let extentBlocks = 16
    /// Words (64 blocks each) one request searches for free extents before
    /// it takes scattered blocks: 256 MiB of pool, a few µs of scanning,
    /// so that a pool with no extents left costs little more than before.
    static let extentSearchWords = 1024

    /// Blocks below this are fixed structures, never allocated.
    let firstAllocatable: PhysicalBlock

    init(blockCount: UInt64) {
        self.blockCount = blockCount
        firstAllocatable = SpaceMapGeometry(blockCount: blockCount).firstAllocatable
        words = [UInt64](repeating: 0, count: Int((blockCount + 63) / 64))
        cursor = firstAllocatable
        extentCursor = firstAllocatable
        for block in 0..<firstAllocatable { markUsed(block) }
    }

    /// Rebuilds from persisted bitmap blocks (32,768 bits each).
    init(blockCount: UInt64, bitmapBlocks: [[UInt8]]) {
        self.init(blockCount: blockCount)
        let wordsPerBitmap = PoolLayout.blocksPerBitmapBlock / 64
        for index in 0..<words.count {
            let bitmap = index / wordsPerBitmap
            guard bitmap < bitmapBlocks.count else { break }
            let offset = (index % wordsPerBitmap) * 8
            var word: UInt64 = 0
            for byte in (0..<8).reversed() { word = word << 8 | UInt64(bitmapBlocks[bitmap][offset + byte]) }
            words[index] |= word
        }
        // Bits past the end of the pool are not blocks.
        if blockCount % 64 != 0 { words[words.count - 1] &= (1 << (blockCount % 64)) - 1 }
        for block in 0..<firstAllocatable { words[Int(block / 64)] |= 1 << (block % 64) }
        usedCount = words.reduce(0) { $0 + UInt64($1.nonzeroBitCount) }
    }

    var freeCount: UInt64 { blockCount - usedCount }

    func isUsed(_ block: PhysicalBlock) -> Bool {
        words[Int(block / 64)] & (1 << (block % 64)) != 0
    }

    mutating func markUsed(_ block: PhysicalBlock) {
        precondition(block < blockCount)
        if !isUsed(block) {
            words[Int(block / 64)] |= 1 << (block % 64)
            usedCount += 1
        }
    }

    mutating func release(_ block: PhysicalBlock) {
        precondition(block >= firstAllocatable && block < blockCount, "release of reserved block \(block)")
        precondition(isUsed(block), "double free of physical block \(block)")
        words[Int(block / 64)] &= ~(1 << (block % 64))
        usedCount -= 1
    }

    /// Allocates `count` blocks, as few runs as the free space allows:
    /// a request of `extentBlocks` or more from free extents first; a
    /// smaller one with a `hint` from the free blocks nearest the hint;
    /// then (and whatever is still missing) next-fit from `cursor`.
    mutating func allocate(_ count: Int, near hint: PhysicalBlock? = nil) -> [PhysicalBlock]? {
        guard UInt64(count) <= freeCount else { return nil }
        var result: [PhysicalBlock] = []
        result.reserveCapacity(count)
        if count >= Self.extentBlocks {
            takeExtents(count, into: &result)
        } else if let hint, hint >= firstAllocatable, hint < blockCount {
            takeNearest(count, to: hint, into: &result)
        }
        takeNextFit(count, into: &result)
        usedCount += UInt64(count)
        return result
    }

    /// Words (64 blocks each) on either side of a hint searched for free
    /// blocks: 1 MiB of pool each way; past that, next-fit.
    static let hintSearchWords = 4

    /// Fills `result` up to `count` with free blocks near `hint`: the
    /// first ones at or after it, within `hintSearchWords` words, else the
    /// last ones before it, as far back. Overwrites thus land beside the
    /// place their neighbours chose (`Volume.placementHint`), and a later
    /// sequential read of them costs one storage request per
    /// neighbourhood, not one per block.
    private mutating func takeNearest(_ count: Int, to hint: PhysicalBlock, into result: inout [PhysicalBlock]) {
        let home = Int(hint / 64)
        let lastWord = min(home + Self.hintSearchWords, words.count - 1)
        for index in home...lastWord {
            let free = freeBits(from: index == home ? hint : UInt64(index) * 64)
            take(from: index, bits: free, count: count, into: &result)
            if result.count == count { return }
        }
        let firstWord = max(home - Self.hintSearchWords, 0)
        for index in (firstWord...home).reversed() {
            var free = freeBits(from: UInt64(index) * 64)
            if index == home { free &= (1 << (hint % 64)) - 1 }
            take(from: index, bits: free, count: count, highestFirst: true, into: &result)
            if result.count == count { return }
        }
    }

    /// Marks used and appends the set `bits` of word `index`, lowest first
    /// (or highest, the nearest to a hint above them), until `result`
    /// holds `count` blocks.
    private mutating func take(
        from index: Int, bits: UInt64, count: Int, highestFirst: Bool = false, into result: inout [PhysicalBlock]
    ) {
        var free = bits
        while free != 0, result.count < count {
            let bit = highestFirst ? UInt64(63 - free.leadingZeroBitCount) : UInt64(free.trailingZeroBitCount)
            free &= ~(1 << bit)
            words[index] |= 1 << bit
            result.append(UInt64(index) * 64 + bit)
        }
    }

    /// The free bits of the word holding `block`, from `block` on.
    private func freeBits(from block: UInt64) -> UInt64 {
        let index = Int(block / 64)
        var free = ~words[index] & (UInt64.max << (block % 64))
        if UInt64(index + 1) * 64 > blockCount { free &= (1 << (blockCount % 64)) - 1 }
        return free
    }

    /// Fills `result` up to `count` from runs of at least `extentBlocks`
    /// free blocks, from `extentCursor` on, searching at most
    /// `extentSearchWords` words. A run may cross into the next word; one
    /// that reaches a word's end is followed into the next.
    private mutating func takeExtents(_ count: Int, into result: inout [PhysicalBlock]) {
        var wordsLeft = Self.extentSearchWords
        var continuing = false
        while result.count < count, wordsLeft > 0 {
            if extentCursor >= blockCount {
                extentCursor = firstAllocatable
                continuing = false
            }
            let index = Int(extentCursor / 64)
            let free = freeBits(from: extentCursor)
            var bit = extentCursor % 64
            if !(continuing && free & (1 << bit) != 0) {
                let next = index + 1 < words.count ? freeBits(from: UInt64(index + 1) * 64) : 0
                // Bit i of `starts` is set when blocks i ..< i + extentBlocks
                // of this word and the next are free.
                var starts = free
                for shift in 1..<UInt64(Self.extentBlocks) { starts &= free >> shift | next << (64 - shift) }
                guard starts != 0 else {
                    extentCursor = UInt64(index + 1) * 64
                    wordsLeft -= 1
                    continuing = false
                    continue
                }
                bit = UInt64(starts.trailingZeroBitCount)
            }
            while bit < 64, free & (1 << bit) != 0, result.count < count {
                words[index] |= 1 << bit
                result.append(UInt64(index) * 64 + bit)
                bit += 1
            }
            extentCursor = UInt64(index) * 64 + bit
            continuing = bit == 64
        }
    }

    /// Fills `result` up to `count` with the free blocks from `cursor` on,
    /// a word (64 blocks) at a time, wrapping once.
    private mutating func takeNextFit(_ count: Int, into result: inout [PhysicalBlock]) {
        // From the cursor's word to the end, then from the start and once
        // more through the cursor's word for the bits below the cursor.
        var wordsLeft = words.count + 1
        while result.count < count {
            precondition(wordsLeft > 0, "space map out of step with its free count")
            wordsLeft -= 1
            if cursor >= blockCount { cursor = firstAllocatable }
            let index = Int(cursor / 64)
            var free = freeBits(from: cursor)
            let end = UInt64(index + 1) * 64
            while free != 0, result.count < count {
                let bit = UInt64(free.trailingZeroBitCount)
                free &= free - 1
                words[index] |= 1 << bit
                result.append(UInt64(index) * 64 + bit)
                cursor = UInt64(index) * 64 + bit + 1
            }
            if result.count < count { cursor = end }
        }
    }

    /// The blocks in use now, as the persisted bitmap blocks lay them out
    /// (docs/format.md, section 8.3): bit `b % 8` of byte `b / 8` of block
    /// `b / 32,768`, that is each word's bytes in little-endian order; a
    /// checkpoint marks in it what it allocates and frees
    /// (`PersistedSpaceMap.mark`). A copy of the words: testing each used
    /// block against a set took a sixth of a checkpoint after random writes.
    func persistedImage() -> PersistedSpaceMap {
        PersistedSpaceMap(words: words)
    }

    var bitmapBlockCount: Int { Int((blockCount + UInt64(PoolLayout.blocksPerBitmapBlock) - 1) / UInt64(PoolLayout.blocksPerBitmapBlock)) }
}

/// Groups physical blocks into runs of consecutive blocks, in order, so
/// each run is one request to the storage side.
func contiguousRuns(_ blocks: [PhysicalBlock]) -> [(start: Int, count: Int)] {
    var runs: [(Int, Int)] = []
    var index = 0
    while index < blocks.count {
        var length = 1
        while index + length < blocks.count, blocks[index + length] == blocks[index] + UInt64(length) { length += 1 }
        runs.append((index, length))
        index += length
    }
    return runs
}

/// The space map as a checkpoint persists it: its bitmap blocks, one at a
/// time (`SpaceMap.persistedImage`).
struct PersistedSpaceMap {
    fileprivate var words: [UInt64]

    /// Marks `blocks` in use, or free: a checkpoint's image is the map as
    /// it began, plus the blocks it allocated, less those it frees.
    mutating func mark(_ blocks: some Sequence<PhysicalBlock>, inUse: Bool) {
        for block in blocks where block / 64 < UInt64(words.count) {
            let bit: UInt64 = 1 << (block % 64)
            if inUse { words[Int(block / 64)] |= bit } else { words[Int(block / 64)] &= ~bit }
        }
    }

    /// Bitmap block `index`, 32,768 blocks, zero past the end of the pool.
    func bitmapBlock(_ index: Int) -> [UInt8] {
        let wordsPerBlock = PoolLayout.blocksPerBitmapBlock / 64
        let first = min(index * wordsPerBlock, words.count)
        let last = min(first + wordsPerBlock, words.count)
        var bytes = [UInt8](repeating: 0, count: PoolLayout.blockSize)
        bytes.withUnsafeMutableBytes { target in
            for (position, word) in words[first..<last].enumerated() {
                target.storeBytes(of: word.littleEndian, toByteOffset: position * 8, as: UInt64.self)
            }
        }
        return bytes
    }
}
