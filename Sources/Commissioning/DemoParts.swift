import Appliance
import Foundation
import Modbus
import Platform
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// A twin that speaks the feed protocol (docs/twin-feed.md) over TCP: one thread sends the current
/// state of each of its devices as a JSON line every `periodMs` (a twin must send at least every
/// `max_age_ms / 2`), with `ts` = now and an increasing `seq`. The demo and the benchmark change
/// what it says, silence a device, or cut the connection.
package final class TwinClient: @unchecked Sendable {
    package struct Said: Sendable {
        package var status: String
        package var values: [String: Double]
        package var silent = false
        package var predicted = false
        /// Counts `update(device:)` calls: a line written says which revision it carried, so
        /// the benchmark times a change from the first line that carries it (`waitSent`).
        package fileprivate(set) var revision: UInt64 = 0

        package init(status: String, values: [String: Double], silent: Bool = false, predicted: Bool = false) {
            self.status = status
            self.values = values
            self.silent = silent
            self.predicted = predicted
        }
    }

    let host: String
    let port: Int
    let periodMs: Int
    /// Device order as given; what each says.
    let order: [String]
    let said: Mutex<[String: Said]>
    /// Per device: when its last line was written (monotonic ns), the revision it carried,
    /// and when the first line carrying that revision was written.
    let lastSentMono = Mutex<[String: Sent]>([:])
    struct Sent {
        var ns: Int64
        var revision: UInt64
        var revisionNs: Int64
    }
    let running = Atomic<Bool>(true)
    let cut = Atomic<Bool>(false)
    let sentCount = Atomic<Int>(0)
    private let started = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)
    private let kick = DispatchSemaphore(value: 0)
    /// Devices to send at once, alone (`sendNow(device:)`); `everyone` asks for all of them.
    private let urgent = Mutex<(devices: [String], everyone: Bool)>(([], false))
    /// When set, each line is handed to this (device, line without newline) instead of the
    /// TCP connection: the demo's twin over MQTT publishes it. Answers whether it was sent.
    let publisher: (@Sendable (String, [UInt8]) -> Bool)?

    /// A twin for several devices, in the given order.
    package init(host: String = "127.0.0.1", port: Int, periodMs: Int, devices: [(String, Said)],
                 publisher: (@Sendable (String, [UInt8]) -> Bool)? = nil) {
        self.host = host
        self.port = port
        self.publisher = publisher
        self.periodMs = periodMs
        self.order = devices.map(\.0)
        self.said = Mutex(Dictionary(devices, uniquingKeysWith: { _, b in b }))
    }

    /// A twin for one device.
    package convenience init(host: String = "127.0.0.1", port: Int, device: String, periodMs: Int, status: String,
                            values: [String: Double], publisher: (@Sendable (String, [UInt8]) -> Bool)? = nil) {
        self.init(host: host, port: port, periodMs: periodMs, devices: [(device, Said(status: status, values: values))],
                  publisher: publisher)
    }

    /// Starts sending (reconnecting every 100 ms while the feed is not reachable).
    package func start() {
        let t = Thread { [self] in
            loop()
            done.signal()
        }
        t.name = "twin-client"
        started.store(true, ordering: .relaxed)
        t.start()
    }

    /// Changes what the twin says (every device) from the next line on.
    package func update(_ body: (inout Said) -> Void) {
        said.withLock { all in for k in all.keys { body(&all[k]!) } }
    }

    /// Changes what the twin says about one device from the next line on; returns the
    /// device's new revision (0 for a device this twin does not speak for).
    @discardableResult
    package func update(device: String, _ body: (inout Said) -> Void) -> UInt64 {
        said.withLock { all in
            guard all[device] != nil else { return 0 }
            body(&all[device]!)
            all[device]!.revision &+= 1
            return all[device]!.revision
        }
    }

    /// Sends every device's state right now (besides the periodic lines), if connected.
    package func sendNow() {
        urgent.withLock { $0.everyone = true }
        kick.signal()
    }

    /// Sends one device's state right now, on its own (besides the periodic lines): the
    /// benchmark times a line from the moment it is written (`lastSent(device:)`), not from
    /// the start of a batch of every device's lines.
    package func sendNow(device: String) {
        urgent.withLock { $0.devices.append(device) }
        kick.signal()
    }

    /// Closes the connection once; the client reconnects on its next line.
    package func cutConnection() { cut.store(true, ordering: .relaxed) }

    /// Monotonic ns of the last line written to the socket for `device` (the first device when nil).
    package func lastSent(device: String? = nil) -> Int64 {
        lastSentMono.withLock { $0[device ?? order.first ?? ""]?.ns ?? 0 }
    }
    package var lastSent: Int64 { lastSent() }

    /// Waits until a line of `device` carrying `revision` (`update(device:)`'s answer) or a
    /// later one was written; returns when the first such line was written (monotonic ns).
    /// Not "the first line written after the change": a batch of every device's lines built
    /// from what the twin said just before the change may be written after it, without it.
    package func waitSent(device: String, revision: UInt64, timeoutMs: Int) -> Int64? {
        let deadline = monotonicNowNs() + Int64(timeoutMs) * 1_000_000
        while monotonicNowNs() < deadline {
            if let last = lastSentMono.withLock({ $0[device] }), last.revision >= revision { return last.revisionNs }
            usleep(100)
        }
        return nil
    }
    package var linesSent: Int { sentCount.load(ordering: .relaxed) }

    package func stop() {
        running.store(false, ordering: .relaxed)
        kick.signal()
        if started.exchange(false, ordering: .relaxed) { done.wait() }
    }

    private func loop() {
        var fd: Int32 = -1
        var seq = UInt64(SystemTimeSource().now().wallNs / 1_000_000)
        var nextPeriodicNs: Int64 = 0
        let periodNs = Int64(periodMs) * 1_000_000
        while running.load(ordering: .relaxed) {
            if cut.exchange(false, ordering: .relaxed), fd >= 0 {
                close(fd)
                fd = -1
            }
            let all = said.withLock { $0 }
            let asked = urgent.withLock { u in
                defer { u = ([], false) }
                return u
            }
            let periodic = asked.everyone || monotonicNowNs() >= nextPeriodicNs
            let speaking = (periodic ? order : asked.devices).filter { all[$0]?.silent == false }
            if periodic { nextPeriodicNs = monotonicNowNs() + periodNs }
            if !speaking.isEmpty, let publisher {
                let now = SystemTimeSource().now()
                var sent: [String] = []
                for d in speaking {
                    seq += 1
                    if publisher(d, Array(line(device: d, all[d]!, seq: seq, wallNs: now.wallNs).utf8)) { sent.append(d) }
                }
                lastSentMono.withLock { m in for d in sent { m.wrote(d, all[d]!.revision, at: now.monotonicNs) } }
                sentCount.add(sent.count, ordering: .relaxed)
            } else if !speaking.isEmpty {
                if fd < 0 { fd = Self.connect(host: host, port: port) }
                if fd >= 0 {
                    let now = SystemTimeSource().now()
                    var text = ""
                    for d in speaking {
                        seq += 1
                        text += line(device: d, all[d]!, seq: seq, wallNs: now.wallNs) + "\n"
                    }
                    let bytes = Array(text.utf8)
                    let writtenNs = monotonicNowNs()  // the lines are built: they leave now
                    if Self.sendAll(fd, bytes) {
                        lastSentMono.withLock { m in for d in speaking { m.wrote(d, all[d]!.revision, at: writtenNs) } }
                        sentCount.add(speaking.count, ordering: .relaxed)
                    } else {
                        close(fd)
                        fd = -1
                    }
                }
            }
            let waitNs = fd < 0 && !speaking.isEmpty ? 100_000_000 : max(0, nextPeriodicNs - monotonicNowNs())
            _ = kick.wait(timeout: .now() + .nanoseconds(Int(waitNs)))
        }
        if fd >= 0 { close(fd) }
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        (try? SystemCall.sendAll(fd, bytes)) != nil
    }

    /// One feed line: `device`, `ts` (RFC 3339, ms), `seq`, `status`, `values`, `predicted`.
    /// Written directly (no JSON tree): the benchmark sends thousands a second.
    func line(device: String, _ s: Said, seq: UInt64, wallNs: Int64) -> String {
        var out = "{\"device\":"
        JSONValue.writeString(device, into: &out)
        out += ",\"ts\":\"\(RFC3339.format(wallNs: wallNs))\",\"seq\":\(seq),\"status\":"
        JSONValue.writeString(s.status, into: &out)
        out += ",\"values\":{"
        var first = true
        for (k, v) in s.values {
            if !first { out += "," }
            first = false
            JSONValue.writeString(k, into: &out)
            out += ":" + JSONValue.format(v)
        }
        out += "},\"predicted\":\(s.predicted)}"
        return out
    }

    static func connect(host: String, port: Int) -> Int32 {
        guard let addr = NetAddress(host: host, port: port) else { return -1 }
        let fd = socket(addr.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return -1 }
        let rc = addr.withSockaddr { Glibc.connect(fd, $0, $1) }
        if rc != 0 {
            close(fd)
            return -1
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }
}

extension [String: TwinClient.Sent] {
    /// Notes a line of `device` carrying `revision`, written at `ns`.
    fileprivate mutating func wrote(_ device: String, _ revision: UInt64, at ns: Int64) {
        let first = self[device].map { $0.revision == revision ? $0.revisionNs : ns } ?? ns
        self[device] = TwinClient.Sent(ns: ns, revision: revision, revisionNs: first)
    }
}

/// An interlock PLC stand-in: a libmodbus client on its own thread reading the permit coils
/// every `periodMs` and remembering when each change was first seen, so the demo and the
/// benchmark can say how many ms the coil took to follow.
package final class CoilReader: @unchecked Sendable {
    /// One observed value of the coils, from when it was first read.
    package struct Change: Sendable {
        package var monotonicNs: Int64
        package var bits: [UInt8]
    }

    let host: String
    let port: Int
    let count: Int
    let periodUs: UInt32
    let changes = Mutex<[Change]>([])
    let errors = Atomic<Int>(0)
    let running = Atomic<Bool>(true)
    private let done = DispatchSemaphore(value: 0)
    private let started = Atomic<Bool>(false)

    /// How the reader thread is scheduled, when not as the process.
    package enum Priority: Sendable, Hashable, CustomStringConvertible {
        /// A nice value (`OSThread.raiseCurrentPriority`).
        case nice(Int32)
        /// `SCHED_FIFO` at this priority (`OSThread.makeCurrentRealtime`).
        case realtime(Int32)

        package var description: String {
            switch self {
            case .nice(let n): "nice \(n)"
            case .realtime(let p): "SCHED_FIFO \(p)"
            }
        }
    }

    /// The reader thread's priority when set: the benchmarks run it as the appliance's drop
    /// path, because the PLC it stands for reads on a CPU of its own, not behind the simulated
    /// plant sharing this machine's cores.
    let priority: Priority?
    /// Why the priority could not be set, if it could not.
    package let priorityRefusal = Mutex<Errno?>(nil)

    /// When set, the reader reads every `idlePeriodUs` (a PLC's scan) and every `periodUs` only
    /// while `watch(forMs:)` asks it to: a benchmark's fine resolution while a sample is in
    /// flight, without its load in between.
    let idlePeriodUs: UInt32?
    private let watchedUntilNs = Atomic<Int64>(0)
    private let wake = DispatchSemaphore(value: 0)

    package init(host: String = "127.0.0.1", port: Int, count: Int, periodUs: UInt32 = 2000, idlePeriodUs: UInt32? = nil,
                 priority: Priority? = nil) {
        self.host = host
        self.port = port
        self.count = count
        self.periodUs = periodUs
        self.idlePeriodUs = idlePeriodUs
        self.priority = priority
    }

    /// Reads every `periodUs` from now for `ms` (the first read at once), when the reader has
    /// an `idlePeriodUs`.
    package func watch(forMs ms: Int) {
        guard idlePeriodUs != nil else { return }
        watchedUntilNs.store(SystemTimeSource().now().monotonicNs + Int64(ms) * 1_000_000, ordering: .relaxed)
        wake.signal()
    }

    package func start() {
        started.store(true, ordering: .relaxed)
        let t = Thread { [self] in
            loop()
            done.signal()
        }
        t.name = "coil-reader"
        t.start()
    }

    package func stop() {
        running.store(false, ordering: .relaxed)
        if started.exchange(false, ordering: .relaxed) { done.wait() }
    }

    /// The coils as last read; nil before the first successful read.
    package var current: [UInt8]? { changes.withLock { $0.last?.bits } }

    /// Read errors so far (connection refused, timeouts).
    package var errorCount: Int { errors.load(ordering: .relaxed) }

    /// Waits until coil `index` reads `value`; returns the monotonic ns of the read that first
    /// saw it (nil after `timeoutMs`). Only reads at or after `sinceNs` count.
    package func waitFor(coil index: Int, _ value: Bool, sinceNs: Int64, timeoutMs: Int) -> Int64? {
        let deadline = SystemTimeSource().now().monotonicNs + Int64(timeoutMs) * 1_000_000
        while SystemTimeSource().now().monotonicNs < deadline {
            let hit: Int64? = changes.withLock { cs in
                // The latest read decides; the time is when this coil first showed the value in
                // the run of reads that still show it (other coils may have changed since).
                guard let last = cs.last, last.bits.count > index, (last.bits[index] == 1) == value else { return nil }
                var i = cs.count - 1
                while i > 0, cs[i].monotonicNs > sinceNs, cs[i - 1].bits.count > index, (cs[i - 1].bits[index] == 1) == value {
                    i -= 1
                }
                return max(cs[i].monotonicNs, sinceNs)
            }
            if let hit { return hit }
            usleep(1000)
        }
        return nil
    }

    private func loop() {
        let refused: Errno? = switch priority {
        case .nice(let n): OSThread.raiseCurrentPriority(to: n)
        case .realtime(let p): OSThread.makeCurrentRealtime(priority: p)
        case nil: nil
        }
        if let refused { priorityRefusal.withLock { $0 = refused } }
        var client: ModbusClient?
        while running.load(ordering: .relaxed) {
            do {
                if client == nil || !(client!.isConnected) {
                    let c = try ModbusClient(host: host, port: port, unit: 1, responseTimeoutMs: 500)
                    try c.connect()
                    client = c
                }
                let bits = try client!.readBits(table: .coil, address: 0, count: count)
                let now = SystemTimeSource().now().monotonicNs
                changes.withLock { cs in
                    if cs.last?.bits != bits { cs.append(Change(monotonicNs: now, bits: bits)) }
                }
            } catch {
                errors.add(1, ordering: .relaxed)
                client = nil
                usleep(20_000)
            }
            if let idlePeriodUs, SystemTimeSource().now().monotonicNs >= watchedUntilNs.load(ordering: .relaxed) {
                _ = wake.wait(timeout: .now() + .microseconds(Int(idlePeriodUs)))
                while wake.wait(timeout: .now()) == .success {}  // several watch calls: one wake
            } else {
                usleep(periodUs)
            }
        }
    }
}
