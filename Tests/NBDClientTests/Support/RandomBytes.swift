import TestSupport

/// Random test data: seeded once from the system, then a fast generator,
/// since a system call per byte makes megabytes slow.
func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SeededGenerator(seed: .random(in: .min ... .max))
    return generator.bytes(count)
}
