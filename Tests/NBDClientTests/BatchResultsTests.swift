@testable import NBDClient
import Testing

@Suite struct BatchResultsTests {
    @Test func aBatchOfSuccessesReadsAsSuccesses() {
        let results = BatchResults([.success(()), .success(())])
        #expect(results.count == 2)
        #expect(results.allSucceeded)
        #expect(results.allSatisfy { $0.failure == nil })
    }

    @Test func failuresKeepTheirPlaces() {
        let results = BatchResults([.success(()), .failure(.closed), .success(()), .failure(.timedOut(.reply))])
        #expect(results.count == 4)
        #expect(!results.allSucceeded)
        #expect(results.map(\.failure) == [nil, .closed, nil, .timedOut(.reply)])
        #expect(Array(results.reversed()).map(\.failure) == [.timedOut(.reply), nil, .closed, nil])
    }

    @Test func recordedResultsReplaceTheSuccessesABatchStartsWith() {
        var results = BatchResults(successes: 3)
        results.record(.success(()), at: 1)
        #expect(results.allSucceeded)
        results.record(.failure(.closed), at: 2)
        results.record(.success(()), at: 0)
        #expect(!results.allSucceeded)
        #expect(results.map(\.failure) == [nil, nil, .closed])
    }

    @Test func anEmptyBatchHasNoResults() {
        let results = BatchResults([])
        #expect(results.isEmpty)
        #expect(results.allSucceeded)
    }
}
