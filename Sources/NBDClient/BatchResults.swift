/// One result per operation of a batch started without waiting
/// (`NBDConnection.start`), in their order. A batch that succeeds whole,
/// as almost every one does, holds no array: each 4 KiB READ and WRITE
/// the crypt domain sent allocated one for its single result, on the
/// thread that sent it, and freed it on the reader thread.
public struct BatchResults: RandomAccessCollection, Sendable {
    private let operationCount: Int
    /// Every result, once one is not a success; nil until then.
    private var results: [Result<Void, NBDClientError>]?

    /// `count` successes, to be changed with `record(_:at:)`.
    init(successes count: Int) {
        operationCount = count
    }

    public init(_ results: [Result<Void, NBDClientError>]) {
        operationCount = results.count
        self.results = results
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { operationCount }

    public subscript(position: Int) -> Result<Void, NBDClientError> {
        precondition(position >= 0 && position < operationCount, "batch result index out of range")
        return results?[position] ?? .success(())
    }

    /// Whether every operation succeeded, known without looking at each
    /// while none has failed.
    public var allSucceeded: Bool {
        results?.allSatisfy { if case .success = $0 { true } else { false } } ?? true
    }

    /// Sets operation `position`'s result.
    mutating func record(_ result: Result<Void, NBDClientError>, at position: Int) {
        if results == nil {
            guard case .failure = result else { return }
            results = [Result](repeating: .success(()), count: operationCount)
        }
        results![position] = result
    }
}
