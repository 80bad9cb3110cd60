// `tibet-twin-profile WORKLOAD [N]`: one hot path, synchronously on the main thread, for
// `valgrind --tool=callgrind` (instruction counts are repeatable on a noisy machine, where
// timings are not; docs/benchmarks.md). valgrind cannot follow the bench binary's async main,
// so the workloads live here, in plain code with the same inputs as GuardBench.
//
//   check  SyncGuard.check(device:intent:) on one crane (evaluate, explain, token, SHA-256, ring)
//   tick   the guard loop's iteration at DEVICES devices (default 1000), N times: every device
//          gets a fresh poll and twin line and a tick is due (20 Hz polls, 50 ms tick), as at
//          steady state with every permit up; publishing the permit image included
//   drop   N iterations (N <= DEVICES) that each drop one device's permits on a twin fault
//          line: one device evaluated, the image published, the drop token submitted
//   feed   N twin lines (SystemBench's shape, round-robin over DEVICES devices) through the
//          feed pipeline (parse, validate, order) into the guard loop's inbox; the loop takes
//          the inbox every DEVICES lines (the guard's side is `tick`); with a `TwinLineMemo`
//          as the socket source keeps one (PROFILE_NO_MEMO=1: every line parsed in full)
//   socket N lines as SystemBench's twin sends them (bursts of one line per device) over TCP to
//          a `TwinSocketSource` feeding the guard loop's inbox: the feed's thread end to end
//          (`--toggle-collect='*TwinLineHandlerC11channelRead*'` counts that thread's reads)

import Appliance
import Foundation
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// A fixed wall time moving 100 ns per reading, as in GuardBench: every check takes the full
/// passing path.
final class StepClock: TimeSource, @unchecked Sendable {
    var ns: Int64 = 1_795_703_520_000_000_000
    func now() -> ClockReading {
        ns += 100
        return ClockReading(monotonicNs: ns, wallNs: ns)
    }
}

func checks(_ n: Int) -> Int {
    let g = SyncGuard(maxDriftMs: 200, valueTolerances: ["crane-0": ["position_x": 0.5, "load_kg": 100]],
                      node: "bench", host: "bench", clock: StepClock())
    g.updatePhysical(device: "crane-0", status: "operational",
                     values: ["position_x": 12.5, "position_y": 8.3, "load_kg": 2500])
    g.updateTwin(device: "crane-0", status: "operational",
                 values: ["position_x": 12.5, "position_y": 8.3, "load_kg": 2500])
    var allowed = 0
    for _ in 0..<n where g.check(device: "crane-0", intent: "move_left").allowed { allowed += 1 }
    return allowed
}

// MARK: The guard loop

/// A clock the workload moves by hand.
final class ManualClock: TimeSource, @unchecked Sendable {
    var reading = ClockReading(monotonicNs: 1_000_000_000, wallNs: 1_795_703_520_000_000_000)
    func now() -> ClockReading { reading }
    func advance(ns: Int64) { reading = ClockReading(monotonicNs: reading.monotonicNs + ns, wallNs: reading.wallNs + ns) }
}

/// An audit chain that makes every record durable at once.
final class InstantAudit: AuditTrail, @unchecked Sendable {
    var isHealthy: Bool { true }
    func submit(_ record: AuditRecord, onDurable: (@Sendable (AuditAck) -> Void)?) { onDurable?(AuditAck()) }
}

struct LoopRig {
    let loop: GuardLoop
    let clock: ManualClock
    let names: [String]
    let maps: [DeviceMap]

    init(devices n: Int) {
        names = (0..<n).map { "crane-\($0)" }
        let maps = names.enumerated().map { k, name in
            DeviceMap(
                device: name, profile: .port, plc: PLCEndpoint(host: "127.0.0.1", pollMs: 50),
                limits: Limits(maxDriftMs: 200, maxAgeMs: 200, rearmMs: 100),
                status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [0: "operational", 1: "fault"]),
                registers: [
                    RegisterSpec(name: "position_x", address: 100, type: .float32, tolerance: 0.5),
                    RegisterSpec(name: "load_kg", address: 102, type: .uint32, tolerance: 100),
                ],
                intents: [IntentSpec(name: "move_left", coil: UInt16(2 * k)), IntentSpec(name: "hoist", coil: UInt16(2 * k + 1))])
        }
        self.maps = maps
        clock = ManualClock()
        loop = GuardLoop(configuration: .init(node: "profile", checkpointS: 0), maps: maps,
                         layout: try! InterlockLayout(maps: maps), audit: InstantAudit(), metrics: ApplianceMetrics(),
                         clock: clock, publish: { _ in })
    }

    func feed(status: String = "operational", only: Int? = nil) {
        let now = clock.now()
        for (k, name) in names.enumerated() where only == nil || only == k {
            loop.submit(physical: PhysicalState(device: name, status: "operational", values: [
                "position_x": Reading(value: .double(12.5), quality: .good),
                "load_kg": Reading(value: .uint(2500), quality: .good),
            ], time: now))
            loop.submit(twin: TwinState(device: name, tsNs: now.wallNs - 20_000_000, seq: nil, status: status,
                                        values: ["position_x": 12.5, "load_kg": 2500], received: now))
        }
    }

    /// Every permit up: states, 100 ms of re-arm, the rises' acknowledgements.
    func arm() {
        for _ in 0..<4 {
            feed()
            loop.iterateOnce()
            clock.advance(ns: 60_000_000)
        }
        feed()
        loop.iterateOnce()
        loop.iterateOnce()
        precondition(loop.publishedPermitCount == 2 * names.count, "not every permit rose: \(loop.publishedPermitCount)")
    }
}

func ticks(devices: Int, _ n: Int) -> Int {
    let rig = LoopRig(devices: devices)
    rig.arm()
    for _ in 0..<n {
        rig.clock.advance(ns: 50_000_000)
        rig.feed()
        rig.loop.iterateOnce()
    }
    return rig.loop.publishedPermitCount
}

func drops(devices: Int, _ n: Int) -> Int {
    let rig = LoopRig(devices: devices)
    rig.arm()
    for k in 0..<min(n, devices) {
        rig.clock.advance(ns: 1000)
        rig.feed(status: "fault", only: k)
        rig.loop.iterateOnce()
    }
    return rig.loop.publishedPermitCount
}

func feedLines(devices: Int, _ n: Int) -> Int {
    let rig = LoopRig(devices: devices)
    rig.arm()
    let parser = try! TwinLineParser(maps: rig.maps, keys: [:])
    let loop = rig.loop
    let pipeline = TwinFeedPipeline(parser: parser) { loop.submit(twin: $0) }
    let received = rig.clock.now()
    let ts = RFC3339.format(wallNs: received.wallNs - 20_000_000)
    // The line SystemBench's twin sends, seq increasing per device.
    let lines: [[UInt8]] = (0..<devices).map { k in
        Array(#"{"device":"\#(rig.names[k])","ts":"\#(ts)","seq":SEQ,"status":"operational","values":{"load_kg":2500,"position_x":12.5},"predicted":false}"#.utf8)
    }
    var accepted = 0
    var memo = TwinLineMemo()
    let memoized = ProcessInfo.processInfo.environment["PROFILE_NO_MEMO"] == nil
    var line: [UInt8] = []
    for i in 0..<n {
        let template = lines[i % devices]
        line.removeAll(keepingCapacity: true)
        let seq = Array(String(i / devices + 1).utf8)
        let at = template.firstIndex(of: UInt8(ascii: "S"))!
        line.append(contentsOf: template[..<at])
        line.append(contentsOf: seq)
        line.append(contentsOf: template[(at + 3)...])
        let outcome = line.withUnsafeBufferPointer {
            memoized ? pipeline.process($0, received: received, memo: &memo) : pipeline.process($0, received: received)
        }
        if case .accepted = outcome { accepted += 1 }
        if i % devices == devices - 1 { loop.iterateOnce() }
    }
    if memoized { print("feed: \(memo.repeats) lines repeated a remembered one, \(memo.parsed) parsed in full") }
    return accepted
}

/// The socket source end to end: one TCP client sends `n` lines (SystemBench's twin: bursts of
/// one line per device, `ts` now, one `seq` count) to a `TwinSocketSource`, whose pipeline
/// hands them to the guard loop's inbox. Answers the lines the source accepted.
func socketLines(devices: Int, _ n: Int) -> UInt64 {
    let rig = LoopRig(devices: devices)
    let parser = try! TwinLineParser(maps: rig.maps, keys: [:])
    let loop = rig.loop
    let pipeline = TwinFeedPipeline(parser: parser, newsSink: { state, news in loop.submit(twin: state, wake: news) })
    let source = TwinSocketSource(endpoint: .tcp(host: "127.0.0.1", port: 0), pipeline: pipeline)
    let started = DispatchSemaphore(value: 0)
    Task {
        try! await source.start()
        started.signal()
    }
    started.wait()
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(source.localPort!).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    precondition(rc == 0, "connect: \(errno)")
    var seq = 1_000_000
    var sent = 0
    while sent < n {
        let ts = RFC3339.format(wallNs: SystemTimeSource().now().wallNs)
        var text = ""
        for k in 0..<min(devices, n - sent) {
            seq += 1
            text += #"{"device":"\#(rig.names[k])","ts":"\#(ts)","seq":\#(seq),"status":"operational","values":{"load_kg":2500,"position_x":12.5},"predicted":false}"# + "\n"
        }
        sent += min(devices, n - sent)
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let w = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, 0) }
            precondition(w > 0, "send: \(errno)")
            done += w
        }
    }
    while source.counters.lines < UInt64(n) { usleep(1000) }
    close(fd)
    let stopped = DispatchSemaphore(value: 0)
    Task {
        await source.stop()
        stopped.signal()
    }
    stopped.wait()
    return source.counters.accepted
}

let args = CommandLine.arguments.dropFirst()
let n = args.dropFirst().first.flatMap { Int($0) } ?? 20_000
switch args.first {
case "check":
    let allowed = checks(n)
    print("check: \(n) checks, \(allowed) allowed")
    exit(allowed == n ? 0 : 1)
case "token":
    let g = SyncGuard(maxDriftMs: 200, valueTolerances: ["crane-0": ["position_x": 0.5, "load_kg": 100]],
                      node: "bench", host: "bench", clock: StepClock())
    g.updatePhysical(device: "crane-0", status: "operational", values: ["position_x": 12.5, "position_y": 8.3, "load_kg": 2500])
    g.updateTwin(device: "crane-0", status: "operational", values: ["position_x": 12.5, "position_y": 8.3, "load_kg": 2500])
    _ = g.check(device: "crane-0", intent: "move_left")
    _ = g.check(device: "crane-0", intent: "move_left")
    let t = g.exportAudit().last!
    print(t.json.canonical)
    print(t.hashedBytes.count)
case "feed":
    let devices = args.dropFirst(2).first.flatMap { Int($0) } ?? 1000
    let accepted = feedLines(devices: devices, n)
    print("feed: \(n) lines at \(devices) devices, \(accepted) accepted")
    exit(accepted == n ? 0 : 1)
case "socket":
    let devices = args.dropFirst(2).first.flatMap { Int($0) } ?? 1000
    let accepted = socketLines(devices: devices, n)
    print("socket: \(n) lines at \(devices) devices, \(accepted) accepted")
    exit(accepted == UInt64(n) ? 0 : 1)
case "tick", "drop":
    let devices = args.dropFirst(2).first.flatMap { Int($0) } ?? 1000
    let permits = args.first == "tick" ? ticks(devices: devices, n) : drops(devices: devices, n)
    print("\(args.first!): \(n) iterations at \(devices) devices, \(permits) permits up at the end")
default:
    print("usage: tibet-twin-profile check|token [N] | tick|drop|feed|socket [N [DEVICES]]")
    exit(2)
}
