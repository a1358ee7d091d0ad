import Testing

/// The verifier itself: it must split faithfully and notice a decoder whose
/// result depends on how its input was split.
@Suite struct FeedThreeWaysTests {
    let input = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }

    @Test(arguments: FeedStrategy.all)
    func everyStrategyDeliversTheInputInOrder(strategy: FeedStrategy) {
        var chunker = Chunker(strategy)
        let chunks = chunker.split(input)
        #expect(Array(chunks.joined()) == input)
        #expect(chunks.allSatisfy { !$0.isEmpty })
        switch strategy {
        case .whole: #expect(chunks.count == 1)
        case .byteAtATime: #expect(chunks.count == input.count)
        case .randomBatches: #expect(Set(chunks.map(\.count)).count > 10)
        }
    }

    @Test func randomBatchesRepeatForTheSameSeed() {
        var first = Chunker(.randomBatches(seed: 3))
        var second = Chunker(.randomBatches(seed: 3))
        var other = Chunker(.randomBatches(seed: 4))
        let sizes = first.split(input).map(\.count)
        #expect(second.split(input).map(\.count) == sizes)
        #expect(other.split(input).map(\.count) != sizes)
    }

    @Test func aSplitSensitiveDecoderIsCaught() {
        withKnownIssue {
            _ = feedThreeWays(input) { chunks in chunks.count }
        }
    }
}
