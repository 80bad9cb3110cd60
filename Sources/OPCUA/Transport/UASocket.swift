import Platform

#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP socket whose reads wait with `poll` until a monotonic deadline. Owned by one
/// thread; `shutdown()` may be called from any thread to end a blocked read.
final class UASocket: @unchecked Sendable {
    private let fd: Int32
    private var closed = false

    /// Connects to `address` within `timeoutMs`.
    init(connectingTo address: NetAddress, timeoutMs: Int) throws(Errno) {
        let s = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard s >= 0 else { throw Errno.current }
        var ok = false
        defer { if !ok { Glibc.close(s) } }
        let rc = address.withSockaddr { Glibc.connect(s, $0, $1) }
        if rc != 0 {
            let e = errno
            guard e == EINPROGRESS || e == EINTR else { throw Errno(e) }
            var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
            let deadline = monotonicNowNs() + Int64(timeoutMs) * 1_000_000
            while true {
                let left = Int32(max(0, (deadline - monotonicNowNs()) / 1_000_000))
                let n = poll(&p, 1, left)
                if n > 0 { break }
                if n == 0 { throw Errno(ETIMEDOUT) }
                if errno != EINTR { throw Errno.current }
            }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len)
            if err != 0 { throw Errno(err) }
        }
        var one: Int32 = 1
        setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        fd = s
        ok = true
    }

    deinit { close() }

    /// Sends all of `bytes`; blocks while the kernel buffer is full (bounded by `deadlineNs`).
    func send(_ bytes: [UInt8], deadlineNs: Int64) throws(Errno) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n > 0 { off += n; continue }
            let e = n < 0 ? errno : EPIPE
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK {
                try waitFor(Int16(POLLOUT), deadlineNs: deadlineNs)
                continue
            }
            throw Errno(e)
        }
    }

    /// Reads exactly `count` bytes into `buffer` from `offset`. The peer closing is
    /// `.closedByPeer`; the deadline passing is `.errno(ETIMEDOUT)`.
    func read(into buffer: inout [UInt8], offset: Int, count: Int, deadlineNs: Int64) throws(ReadError) {
        var got = 0
        while got < count {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + offset + got, count - got, 0) }
            if n > 0 { got += n; continue }
            if n == 0 { throw .closedByPeer }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK {
                do { try waitFor(Int16(POLLIN), deadlineNs: deadlineNs) } catch { throw .errno(error) }
                continue
            }
            throw .errno(Errno(e))
        }
    }

    enum ReadError: Error {
        case closedByPeer
        case errno(Errno)
    }

    private func waitFor(_ events: Int16, deadlineNs: Int64) throws(Errno) {
        while true {
            let left = deadlineNs - monotonicNowNs()
            if left <= 0 { throw Errno(ETIMEDOUT) }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let n = poll(&p, 1, Int32(min(Int64(Int32.max), (left + 999_999) / 1_000_000)))
            if n > 0 { return }
            if n < 0 && errno != EINTR { throw Errno.current }
        }
    }

    /// Ends the connection in both directions: a read blocked on another thread returns.
    func shutdown() { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }

    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }
}
