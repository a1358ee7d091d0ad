import Testing
import TestScratch

typealias Scratch = ScratchFolder

extension ScratchFolder {
    /// Deletes the folder; a mount still inside it is recorded as an issue.
    func remove() {
        if let busy = removeUnlessMounted() { Issue.record("left \(path) in place: \(busy) is still mounted") }
    }
}
