import Platform

#if canImport(Glibc)
import Glibc
#endif

/// Every command's output to fd 1 and 2, without the Glibc `stdout`/`stderr` globals (not
/// concurrency-safe): unbuffered, so a pipe sees each line at once.
enum CLIOut {
    /// Writes one line to standard error, prefixed with the program name.
    static func error(_ line: String) {
        raw("tibet-twin: " + line + "\n")
    }

    /// Writes text to standard error as is.
    static func raw(_ text: String) {
        write(2, text)
    }

    /// Writes one line to standard error (a newline is added unless there is one).
    static func errorLine(_ text: String) {
        write(2, text.hasSuffix("\n") ? text : text + "\n")
    }

    /// Writes one line to standard output (a newline is added unless there is one).
    static func outputLine(_ text: String) {
        write(1, text.hasSuffix("\n") ? text : text + "\n")
    }

    /// Writes all of `text` to a file descriptor; gives up silently when the descriptor fails
    /// (nothing useful can be reported).
    static func write(_ fd: Int32, _ text: String) {
        try? SystemCall.writeAll(fd, Array(text.utf8))
    }

    static var stdoutIsTerminal: Bool { isatty(1) == 1 }
}

/// Reading small input files (a map, a state file, a key) for the commands.
enum CLIFiles {
    /// Inputs larger than this are refused.
    static let maxBytes = 16 * 1024 * 1024

    static func readText(_ path: String) throws(CLIInputError) -> String {
        let data: [UInt8]
        do {
            data = try SystemCall.readFile(path, limit: maxBytes)
        } catch {
            switch error {
            case .open(let e): throw CLIInputError("\(path): cannot open: \(e.meaningFirst)" + PathAccess.hint(e, path: path))
            case .errno(let e): throw CLIInputError("\(path): cannot read: \(e.meaningFirst)")
            case .tooLarge: throw CLIInputError("\(path): larger than 16 MiB")
            }
        }
        guard let text = String(validating: data, as: UTF8.self) else {
            throw CLIInputError("\(path): not valid UTF-8")
        }
        return text
    }

    /// The directory part of a path, with a trailing slash (empty for a bare file name).
    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return String(path[...slash])
    }
}
