#if canImport(Glibc)
import Glibc
#endif

/// An errno value with its symbolic name and what it means. The one errno table of the project:
/// `strerror` is not thread-safe, so every part names errno values through here.
public struct Errno: Error, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: Int32

    @inlinable
    public init(_ rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's `errno`, read now: call right after the failing call.
    @inlinable
    public static var current: Errno { Errno(errno) }

    /// `ENOSPC`; `errno 123` for a value not in the table.
    public var name: String { Self.entry(rawValue)?.name ?? "errno \(rawValue)" }

    /// What it means in a few words (`no space left on device`), nil where the table has none.
    public var meaning: String? { Self.entry(rawValue)?.meaning }

    /// `ENOSPC (no space left on device)`, or the bare name.
    public var description: String {
        guard let e = Self.entry(rawValue) else { return "errno \(rawValue)" }
        return "\(e.name) (\(e.meaning))"
    }

    /// `no space left on device (ENOSPC)`: for messages that lead with the meaning.
    public var meaningFirst: String {
        guard let e = Self.entry(rawValue) else { return "errno \(rawValue)" }
        return "\(e.meaning) (\(e.name))"
    }

    private static func entry(_ e: Int32) -> (name: String, meaning: String)? {
        switch e {
        case EPERM: return ("EPERM", "operation not permitted")
        case ENOENT: return ("ENOENT", "no such file or directory")
        case EINTR: return ("EINTR", "interrupted")
        case EIO: return ("EIO", "input/output error")
        case EBADF: return ("EBADF", "bad file descriptor")
        case EAGAIN: return ("EAGAIN", "try again")
        case ENOMEM: return ("ENOMEM", "out of memory")
        case EACCES: return ("EACCES", "permission denied")
        case EEXIST: return ("EEXIST", "file exists")
        case ENOTDIR: return ("ENOTDIR", "not a directory")
        case EISDIR: return ("EISDIR", "is a directory")
        case EINVAL: return ("EINVAL", "invalid argument")
        case ENFILE: return ("ENFILE", "too many open files in system")
        case EMFILE: return ("EMFILE", "too many open files")
        case ENOTTY: return ("ENOTTY", "not supported by this device")
        case EBUSY: return ("EBUSY", "device or resource busy")
        case EFBIG: return ("EFBIG", "file too large")
        case ENOSPC: return ("ENOSPC", "no space left on device")
        case EROFS: return ("EROFS", "read-only file system")
        case EPIPE: return ("EPIPE", "broken pipe")
        case ENAMETOOLONG: return ("ENAMETOOLONG", "file name too long")
        case ELOOP: return ("ELOOP", "too many symbolic links")
        case EPROTO: return ("EPROTO", "protocol error")
        case ENOTSOCK: return ("ENOTSOCK", "not a socket")
        case EAFNOSUPPORT: return ("EAFNOSUPPORT", "address family not supported")
        case EADDRINUSE: return ("EADDRINUSE", "address already in use")
        case EADDRNOTAVAIL: return ("EADDRNOTAVAIL", "address not on this host")
        case ENETUNREACH: return ("ENETUNREACH", "network unreachable")
        case ECONNABORTED: return ("ECONNABORTED", "connection aborted")
        case ECONNRESET: return ("ECONNRESET", "connection reset by peer")
        case ENOBUFS: return ("ENOBUFS", "no buffer space available")
        case ENOTCONN: return ("ENOTCONN", "not connected")
        case ETIMEDOUT: return ("ETIMEDOUT", "timed out")
        case ECONNREFUSED: return ("ECONNREFUSED", "connection refused")
        case EHOSTUNREACH: return ("EHOSTUNREACH", "host unreachable")
        case EINPROGRESS: return ("EINPROGRESS", "operation in progress")
        case EDQUOT: return ("EDQUOT", "disk quota exceeded")
        default: return nil
        }
    }
}
