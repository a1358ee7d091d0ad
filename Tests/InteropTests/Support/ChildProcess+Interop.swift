import TestScratch

extension ChildProcess {
    /// Starts `command` (a program name or absolute path, then its
    /// arguments) with stdout to `outputPath` and stderr to `errorPath`
    /// (the same file if equal), both truncated.
    convenience init(_ command: [String], outputPath: String, errorPath: String) throws {
        guard let program = command.first else { throw InteropError.setupFailed("empty command") }
        let executable = program.hasPrefix("/") ? program : try Tools.path(of: program)
        try self.init(
            executable: executable, arguments: Array(command.dropFirst()), commandLine: shellLine(command),
            outputPath: outputPath, errorPath: errorPath, truncate: true)
    }
}
