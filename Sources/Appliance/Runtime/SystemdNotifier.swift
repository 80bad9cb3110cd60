import Platform

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a notification to systemd could not be sent.
package struct NotifyError: Error, Sendable, Hashable, CustomStringConvertible {
    package enum Kind: Sendable, Hashable {
        /// `$NOTIFY_SOCKET` is not an absolute path or an abstract (`@`) name, or is too long.
        case badSocketPath
        /// `socket(2)` failed.
        case socket
        /// `sendto(2)` failed.
        case send
    }

    package var kind: Kind
    package var errno: Int32
    /// The socket path as given in `$NOTIFY_SOCKET`.
    package var path: String

    package var description: String {
        switch kind {
        case .badSocketPath: return "sd_notify: NOTIFY_SOCKET \"\(path)\" is not a usable unix socket path"
        case .socket: return "sd_notify: socket(AF_UNIX, SOCK_DGRAM) failed: \(Errno(errno).name)"
        case .send: return "sd_notify: sendto \(path) failed: \(Errno(errno).name)"
        }
    }
}

/// Tells systemd about the service's state over `$NOTIFY_SOCKET` (the `sd_notify` protocol:
/// one datagram of `KEY=value` lines), without linking libsystemd.
///
/// Safe to use from any thread: every send opens, uses and closes its own datagram socket, so
/// nothing is shared. When `$NOTIFY_SOCKET` is unset (not started by systemd) every call is a
/// no-op that succeeds.
package struct SystemdNotifier: Sendable {
    /// The socket path (`/run/systemd/notify`, or `@name` for the abstract namespace); `nil` if
    /// the process was not started with `Type=notify`.
    package let socketPath: String?
    /// The watchdog interval systemd expects pings within (`$WATCHDOG_USEC`), if the watchdog is
    /// enabled for this process.
    package let watchdogUsec: UInt64?

    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` from the environment.
    package init() {
        let env = { (name: String) -> String? in getenv(name).map { String(cString: $0) } }
        self.init(socketPath: env("NOTIFY_SOCKET"),
                  watchdogUsec: env("WATCHDOG_USEC").flatMap(UInt64.init),
                  watchdogPid: env("WATCHDOG_PID").flatMap(Int32.init))
    }

    /// A notifier for an explicit socket (tests); `watchdogPid`, if given and not this process,
    /// disables the watchdog as `sd_watchdog_enabled` does.
    package init(socketPath: String?, watchdogUsec: UInt64? = nil, watchdogPid: Int32? = nil) {
        self.socketPath = (socketPath?.isEmpty ?? true) ? nil : socketPath
        if let pid = watchdogPid, pid != getpid() {
            self.watchdogUsec = nil
        } else {
            self.watchdogUsec = (watchdogUsec ?? 0) > 0 ? watchdogUsec : nil
        }
    }

    /// Whether systemd listens (the process runs under `Type=notify`).
    package var isActive: Bool { socketPath != nil }

    /// `READY=1`: startup is complete (sent after the first full evaluation).
    package func ready(status: String? = nil) throws(NotifyError) {
        try send(["READY=1"] + (status.map { ["STATUS=\(oneLine($0))"] } ?? []))
    }

    /// `STATUS=…`: a one-line human-readable state shown by `systemctl status`.
    package func status(_ text: String) throws(NotifyError) {
        try send(["STATUS=\(oneLine(text))"])
    }

    /// `WATCHDOG=1`: the keep-alive ping; sent from the guard's evaluation tick so a hung
    /// guard loop stops pinging and systemd restarts the service.
    package func watchdog() throws(NotifyError) {
        try send(["WATCHDOG=1"])
    }

    /// `RELOADING=1`: a SIGHUP reload is in progress.
    package func reloading() throws(NotifyError) {
        try send(["RELOADING=1"])
    }

    /// `STOPPING=1`: shutdown has begun (permits are already 0).
    package func stopping(status: String? = nil) throws(NotifyError) {
        try send(["STOPPING=1"] + (status.map { ["STATUS=\(oneLine($0))"] } ?? []))
    }

    /// Sends one datagram with the given `KEY=value` lines. The corresponding C function is
    /// `sd_notify` (libsystemd), reimplemented over `sendto(2)`.
    package func send(_ lines: [String]) throws(NotifyError) {
        guard let path = socketPath else { return }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(path.utf8)
        let abstract = pathBytes.first == UInt8(ascii: "@")
        guard abstract || pathBytes.first == UInt8(ascii: "/") else {
            throw NotifyError(kind: .badSocketPath, errno: 0, path: path)
        }
        if abstract { pathBytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard pathBytes.count < capacity else { throw NotifyError(kind: .badSocketPath, errno: 0, path: path) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in pathBytes.enumerated() { raw[i] = b }
        }
        // Abstract names are not NUL-terminated: the length says where they end.
        let addrLen = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count + (abstract ? 0 : 1))

        #if canImport(Glibc)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let fd = socket(AF_UNIX, SOCK_DGRAM, 0)
        #endif
        guard fd >= 0 else { throw NotifyError(kind: .socket, errno: errno, path: path) }
        defer { close(fd) }
        let message = Array((lines.joined(separator: "\n") + "\n").utf8)
        let sent = message.withUnsafeBytes { buf in
            withUnsafePointer(to: &addr) { ap in
                ap.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    sendto(fd, buf.baseAddress, buf.count, Int32(MSG_NOSIGNAL), sa, addrLen)
                }
            }
        }
        if sent < 0 { throw NotifyError(kind: .send, errno: errno, path: path) }
    }

    private func oneLine(_ s: String) -> String {
        String(s.map { $0 == "\n" || $0 == "\r" ? " " : $0 })
    }
}
