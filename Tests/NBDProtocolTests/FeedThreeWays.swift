import TestSupport
import Testing

// After SwiftNIO's ByteToMessageDecoderVerifier: a decoder must make the same
// events of a byte stream however the stream is split into reads.

/// One way of splitting a byte stream into the reads a driver would see.
enum FeedStrategy: Sendable, Equatable, CustomStringConvertible {
    case byteAtATime
    case whole
    /// Batches of random sizes from a seeded generator, so a failure reproduces.
    case randomBatches(seed: UInt64)

    /// Whole first: its outcome is the reference the others must match.
    static let all: [FeedStrategy] = [
        .whole, .byteAtATime, .randomBatches(seed: 0x5EED_0001), .randomBatches(seed: 0xBAD_5EED),
    ]

    var description: String {
        switch self {
        case .byteAtATime: "one byte at a time"
        case .whole: "whole"
        case .randomBatches(let seed): "random batches (seed 0x\(String(seed, radix: 16)))"
        }
    }
}

/// Splits successive byte arrays by one strategy. Random batch sizes mix
/// tiny and large reads so that every header boundary gets crossed.
struct Chunker {
    let strategy: FeedStrategy
    private var generator: SeededGenerator

    init(_ strategy: FeedStrategy) {
        self.strategy = strategy
        if case .randomBatches(let seed) = strategy {
            generator = SeededGenerator(seed: seed)
        } else {
            generator = SeededGenerator(seed: 0)
        }
    }

    mutating func split(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        guard !bytes.isEmpty else { return [] }
        switch strategy {
        case .whole:
            return [bytes[...]]
        case .byteAtATime:
            return bytes.indices.map { bytes[$0..<($0 + 1)] }
        case .randomBatches:
            var chunks: [ArraySlice<UInt8>] = []
            var start = 0
            while start < bytes.count {
                let cap = [1, 3, 17, 300, 70_000].randomElement(using: &generator)!
                let end = min(bytes.count, start + Int.random(in: 1...cap, using: &generator))
                chunks.append(bytes[start..<end])
                start = end
            }
            return chunks
        }
    }
}

/// Runs `run` once per feed strategy and records an issue if any outcome
/// differs from feeding the input whole. Returns the whole-feed outcome.
func sameForEveryFeed<Outcome: Equatable>(
    sourceLocation: SourceLocation = #_sourceLocation, _ run: (inout Chunker) -> Outcome
) -> Outcome {
    var reference: Outcome?
    for strategy in FeedStrategy.all {
        var chunker = Chunker(strategy)
        let outcome = run(&chunker)
        if let reference {
            #expect(outcome == reference, "fed \(strategy), unlike fed whole", sourceLocation: sourceLocation)
        } else {
            reference = outcome
        }
    }
    return reference!
}

/// Feeds `input` three ways (one byte at a time, whole, random batches) to
/// `decode`, which must build a fresh decoder each time; the outcomes must agree.
func feedThreeWays<Outcome: Equatable>(
    _ input: [UInt8], sourceLocation: SourceLocation = #_sourceLocation,
    _ decode: ([ArraySlice<UInt8>]) -> Outcome
) -> Outcome {
    sameForEveryFeed(sourceLocation: sourceLocation) { chunker in decode(chunker.split(input)) }
}
