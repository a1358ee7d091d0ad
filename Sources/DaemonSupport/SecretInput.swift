import Foundation
import Keys
#if canImport(Glibc)
import Glibc
#endif

/// Why a secret could not be read.
public struct SecretInputError: Error, CustomStringConvertible {
    public let description: String
}

/// Reads passphrases and recovery keys: from a key file (its exact bytes,
/// as cryptsetup's --key-file) or from the terminal without echo.
public enum SecretInput {
    /// Largest key file read: a passphrase, not a disk image.
    public static let maxKeyFileSize = 8192

    public static func keyFile(_ path: String) throws(SecretInputError) -> [UInt8] {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw SecretInputError(description: "cannot read key file \(path): \(String(cString: strerror(errno)))")
        }
        defer { try? handle.close() }
        let data = (try? handle.read(upToCount: maxKeyFileSize + 1)) ?? Data()
        guard data.count <= maxKeyFileSize else {
            throw SecretInputError(description: "key file \(path) is larger than \(maxKeyFileSize) bytes")
        }
        guard !data.isEmpty else { throw SecretInputError(description: "key file \(path) is empty") }
        return Array(data)
    }

    /// Prompts on the controlling terminal and reads a line with echo off.
    public static func prompt(_ text: String) throws(SecretInputError) -> [UInt8] {
        let fd = open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            throw SecretInputError(description: "no terminal to ask for the secret: use --key-file")
        }
        defer { close(fd) }
        _ = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
        var saved = termios()
        tcgetattr(fd, &saved)
        var silent = saved
        silent.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(fd, TCSAFLUSH, &silent)
        defer {
            tcsetattr(fd, TCSAFLUSH, &saved)
            _ = write(fd, "\n", 1)
        }
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        while read(fd, &byte, 1) == 1, byte != 10 {
            bytes.append(byte)
            guard bytes.count <= maxKeyFileSize else { throw SecretInputError(description: "input too long") }
        }
        return bytes
    }

    /// The pool secret from `--key-file`, `--recovery-key-file` or a prompt.
    public static func poolSecret(keyFile: String?, recoveryKeyFile: String?) throws(SecretInputError) -> KeyslotSecret {
        if let recoveryKeyFile {
            var bytes = try self.keyFile(recoveryKeyFile)
            defer { explicit_bzero(&bytes, bytes.count) }
            do {
                return .recovery(try RecoveryKey(parsing: String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)))
            } catch {
                throw SecretInputError(description: error.description)
            }
        }
        if let keyFile { return .passphrase(try self.keyFile(keyFile)) }
        return .passphrase(try prompt("Passphrase: "))
    }
}
