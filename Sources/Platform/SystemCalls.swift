#if canImport(Glibc)
import Glibc
#endif

/// The project's system-call layer: each call retried after `EINTR` in one place, failures
/// thrown as `Errno` read right after the call (as swift-nio's `syscall(blocking:where:)`).
public enum SystemCall {
    /// Calls `body` until it returns something other than -1 with `EINTR`; -1 with any other
    /// errno throws it.
    @inlinable
    public static func retrying<T: FixedWidthInteger>(_ body: () -> T) throws(Errno) -> T {
        while true {
            let r = body()
            if r != -1 { return r }
            let e = errno
            if e == EINTR { continue }
            throw Errno(e)
        }
    }

    /// `open(2)` with `O_CLOEXEC` added.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o640) throws(Errno) -> Int32 {
        try retrying { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    /// Writes all of `bytes`, looping over short writes and `EINTR`. On failure the error says
    /// how many bytes had been written (a partial line is the caller's to clean up).
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(PartialWrite) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
            if n > 0 { off += n; continue }
            let e = n < 0 ? errno : EIO
            if n < 0 && e == EINTR { continue }
            throw PartialWrite(errno: Errno(e), written: off)
        }
    }

    /// Reads `fd` to its end, refusing more than `limit` bytes (`limit + 1` read: `TooLarge`).
    public static func readAll(_ fd: Int32, limit: Int = .max) throws(ReadFailure) -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if n > 0 {
                out.append(contentsOf: chunk[0..<n])
                if out.count > limit { throw .tooLarge(limit: limit) }
                continue
            }
            if n == 0 { return out }
            let e = errno
            if e == EINTR { continue }
            throw .errno(Errno(e))
        }
    }

    /// Opens and reads a whole file (see `readAll(_:limit:)`).
    public static func readFile(_ path: String, limit: Int = .max) throws(ReadFailure) -> [UInt8] {
        let fd: Int32
        do { fd = try open(path, O_RDONLY) } catch { throw .open(error) }
        defer { close(fd) }
        return try readAll(fd, limit: limit)
    }
}

/// A write that failed after `written` bytes.
public struct PartialWrite: Error, Sendable, Hashable {
    public var errno: Errno
    public var written: Int
}

/// Why reading a file failed.
public enum ReadFailure: Error, Sendable, Hashable {
    case open(Errno)
    case errno(Errno)
    case tooLarge(limit: Int)
}

extension SystemCall {
    /// Sends all of `bytes` on a socket with `MSG_NOSIGNAL` (a closed peer is `EPIPE`, not a
    /// signal), looping over short sends and `EINTR`.
    public static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws(PartialWrite) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n > 0 { off += n; continue }
            let e = n < 0 ? errno : EPIPE
            if n < 0 && e == EINTR { continue }
            throw PartialWrite(errno: Errno(e), written: off)
        }
    }
}

extension Errno {
    /// `ENOENT: no such file or directory`: for messages in the `file:line:col: key: …` style.
    public var colonForm: String {
        guard let meaning else { return name }
        return "\(name): \(meaning)"
    }
}
