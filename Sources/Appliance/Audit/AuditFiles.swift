#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import TibetTwin
import Platform

/// Why the audit store or an audit file operation failed: what, which system call, errno, path.
package struct AuditError: Error, Sendable, Hashable, CustomStringConvertible {
    package enum Kind: String, Sendable, Hashable {
        /// The signing key file is missing, unreadable or not a key.
        case key
        /// The signing key file is readable or writable by group or others.
        case keyPermissions
        /// The audit directory cannot be created, listed or locked.
        case directory
        /// Another process holds the audit directory.
        case locked
        /// A segment file cannot be opened, read or created.
        case open
        case read
        /// write(2) failed or was short (disk full, file too large, I/O error).
        case write
        /// fdatasync(2) / fsync(2) failed: the data is not known to be on disk.
        case sync
        case truncate
        /// The store is not writing at the moment (it failed and retries), or was closed.
        case unhealthy
        case closed
        /// The record was held during an outage and dropped because too many were held.
        case overflow
        /// Signing failed.
        case sign
    }
    package var kind: Kind
    /// The system call or step (`fdatasync`, `open`, `flock` …).
    package var function: String
    package var errno: Int32?
    package var path: String
    package var detail: String

    package init(_ kind: Kind, function: String, errno: Int32? = nil, path: String, detail: String = "") {
        self.kind = kind
        self.function = function
        self.errno = errno
        self.path = path
        self.detail = detail
    }

    /// `audit/tibet-3.jsonl: fdatasync failed: ENOSPC (no space left on device)`
    package var description: String {
        var s = path.isEmpty ? "" : path + ": "
        s += "\(function) failed"
        if let e = errno { s += ": " + Errno(e).description }
        if !detail.isEmpty { s += (errno == nil ? ": " : " — ") + detail }
        return s
    }
}

/// Thin wrappers over the POSIX calls the audit store makes, each throwing `AuditError` with
/// errno read right after the call. Used only on the audit writer thread (and at open).
enum AuditFS {
    static func join(_ dir: String, _ name: String) -> String {
        dir.hasSuffix("/") ? dir + name : dir + "/" + name
    }

    /// Opens `path` with `flags` (and `O_CLOEXEC`).
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o640, kind: AuditError.Kind = .open) throws(AuditError) -> Int32 {
        do { return try SystemCall.open(path, flags, mode: mode) } catch {
            throw AuditError(kind, function: "open", errno: error.rawValue, path: path)
        }
    }

    /// Writes all of `bytes` at the file's end (the descriptor is `O_APPEND`), looping over
    /// short writes. A short write followed by an error leaves a partial line: the caller truncates.
    static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(AuditError) {
        do { try SystemCall.writeAll(fd, bytes) } catch {
            throw AuditError(.write, function: "write", errno: error.errno.rawValue, path: path,
                             detail: "\(error.written) of \(bytes.count) bytes written")
        }
    }

    static func dataSync(_ fd: Int32, path: String) throws(AuditError) {
        try call(.sync, "fdatasync", path: path) { fdatasync(fd) }
    }

    static func sync(_ fd: Int32, path: String) throws(AuditError) {
        try call(.sync, "fsync", path: path) { fsync(fd) }
    }

    /// Makes a directory entry (a created or renamed file) durable.
    static func syncDirectory(_ dir: String) throws(AuditError) {
        let fd = try open(dir, O_RDONLY | O_DIRECTORY, kind: .directory)
        defer { close(fd) }
        try sync(fd, path: dir)
    }

    static func truncate(_ fd: Int32, to size: Int, path: String) throws(AuditError) {
        try call(.truncate, "ftruncate", path: path, detail: "to \(size) bytes") { ftruncate(fd, off_t(size)) }
    }

    /// One system call, retried after EINTR; its failure as an `AuditError`.
    private static func call(_ kind: AuditError.Kind, _ function: String, path: String, detail: String = "",
                             _ body: () -> Int32) throws(AuditError) {
        do { _ = try SystemCall.retrying(body) } catch {
            throw AuditError(kind, function: function, errno: error.rawValue, path: path, detail: detail)
        }
    }

    static func size(_ fd: Int32, path: String) throws(AuditError) -> Int {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw AuditError(.read, function: "fstat", errno: errno, path: path) }
        return Int(st.st_size)
    }

    /// Reads a whole file.
    static func readAll(_ path: String) throws(AuditError) -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { close(fd) }
        return try readAll(fd: fd, path: path)
    }

    static func readAll(fd: Int32, path: String) throws(AuditError) -> [UInt8] {
        do { return try SystemCall.readAll(fd) } catch {
            guard case .errno(let e) = error else { preconditionFailure("no limit, no open") }
            throw AuditError(.read, function: "read", errno: e.rawValue, path: path)
        }
    }

    /// Creates `dir` (and missing parents, mode 0750) if it does not exist; fails if it exists
    /// and is not a directory.
    static func makeDirectory(_ dir: String) throws(AuditError) {
        var st = stat()
        if stat(dir, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFDIR else {
                throw AuditError(.directory, function: "stat", errno: ENOTDIR, path: dir)
            }
            return
        }
        // Only a missing directory is made; one that cannot be reached says why.
        let e = Errno.current
        guard e.rawValue == ENOENT else {
            throw AuditError(.directory, function: "stat", errno: e.rawValue, path: dir,
                             detail: PathAccess.blockage(e, path: dir) ?? "")
        }
        let parent = parentDirectory(dir)
        if parent != dir && !parent.isEmpty { try makeDirectory(parent) }
        if mkdir(dir, 0o750) != 0 {
            let e = errno
            if e != EEXIST { throw AuditError(.directory, function: "mkdir", errno: e, path: dir) }
        }
    }

    static func parentDirectory(_ path: String) -> String {
        var p = path
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        guard let slash = p.lastIndex(of: "/") else { return "." }
        if slash == p.startIndex { return "/" }
        return String(p[..<slash])
    }

    /// The segment numbers present in `dir`, ascending.
    static func segmentNumbers(in dir: String) throws(AuditError) -> [Int] {
        guard let d = opendir(dir) else { throw AuditError(.directory, function: "opendir", errno: errno, path: dir) }
        defer { closedir(d) }
        var numbers: [Int] = []
        while let entry = readdir(d) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if let n = AuditSegment.number(of: name) { numbers.append(n) }
        }
        return numbers.sorted()
    }

    /// The names of the files in `dir` ending in `suffix`, sorted.
    static func names(in dir: String, suffix: String) throws(AuditError) -> [String] {
        guard let d = opendir(dir) else { throw AuditError(.directory, function: "opendir", errno: errno, path: dir) }
        defer { closedir(d) }
        var names: [String] = []
        while let entry = readdir(d) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name.hasSuffix(suffix) { names.append(name) }
        }
        return names.sorted()
    }

    static func hostName() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count - 1) == 0 else { return "unknown" }
        return String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
