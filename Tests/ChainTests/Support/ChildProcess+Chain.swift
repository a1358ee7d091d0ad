import TestScratch

extension ChildProcess {
    /// Starts `command` (a program name or absolute path, then its
    /// arguments), its stdout and stderr going to one log file.
    convenience init(_ command: [String], logPath: String) throws {
        guard let first = command.first else { throw ChainError.setup("empty command") }
        let executable = first.hasPrefix("/") ? first : try Tools.path(of: first)
        try self.init(
            executable: executable, arguments: Array(command.dropFirst()), commandLine: shellQuoted(command),
            outputPath: logPath)
    }
}
