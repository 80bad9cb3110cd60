import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import Appliance
import TestSupport

/// A unix datagram socket bound to `path` (or an abstract name when it starts with `@`) that
/// receives what the notifier sends, as systemd's notify socket would.
final class DatagramReceiver {
    let fd: Int32
    let path: String

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw ReceiverError(what: "socket", errno: errno) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
        if !abstract { unlink(path) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        guard rc == 0 else { let e = errno; close(fd); throw ReceiverError(what: "bind", errno: e) }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The next datagram's text, or `nil` after 5 s.
    func receive() -> String? {
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n >= 0 else { return nil }
        return String(decoding: buf[0..<n], as: UTF8.self)
    }

    deinit {
        close(fd)
        if !path.hasPrefix("@") { unlink(path) }
    }
}

struct ReceiverError: Error { var what: String; var errno: Int32 }

@Suite("sd_notify")
struct SystemdNotifierTests {
    @Test func sendsEachMessageAsOneDatagram() throws {
        let path = "/tmp/tibet-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let receiver = try DatagramReceiver(path: path)
        let n = SystemdNotifier(socketPath: path, watchdogUsec: 5_000_000)
        #expect(n.isActive)
        #expect(n.watchdogUsec == 5_000_000)
        try n.ready(status: "3 devices, 2 permits")
        #expect(receiver.receive() == "READY=1\nSTATUS=3 devices, 2 permits\n")
        try n.status("line one\nline two")
        #expect(receiver.receive() == "STATUS=line one line two\n")
        try n.watchdog()
        #expect(receiver.receive() == "WATCHDOG=1\n")
        try n.reloading()
        #expect(receiver.receive() == "RELOADING=1\n")
        try n.stopping()
        #expect(receiver.receive() == "STOPPING=1\n")
    }

    @Test func abstractSocketName() throws {
        let name = "@tibet-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let receiver = try DatagramReceiver(path: name)
        try SystemdNotifier(socketPath: name).watchdog()
        #expect(receiver.receive() == "WATCHDOG=1\n")
    }

    @Test func withoutSocketEverythingIsANoOp() throws {
        let n = SystemdNotifier(socketPath: nil)
        #expect(!n.isActive)
        try n.ready()
        try n.watchdog()
    }

    @Test func watchdogForAnotherPidIsDisabled() {
        #expect(SystemdNotifier(socketPath: "/x", watchdogUsec: 1000, watchdogPid: getpid()).watchdogUsec == 1000)
        #expect(SystemdNotifier(socketPath: "/x", watchdogUsec: 1000, watchdogPid: getpid() + 1).watchdogUsec == nil)
        #expect(SystemdNotifier(socketPath: "/x", watchdogUsec: 0).watchdogUsec == nil)
    }

    @Test func missingListenerIsATypedError() {
        let path = "/tmp/tibet-notify-none-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        #expect(throws: NotifyError.self) { try SystemdNotifier(socketPath: path).watchdog() }
        #expect(throws: NotifyError.self) { try SystemdNotifier(socketPath: "relative.sock").watchdog() }
    }
}
