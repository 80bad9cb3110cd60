import Appliance
// SOCK_STREAM and MSG_NOSIGNAL: this toolchain's Glibc module does not reliably export them;
// importing a C shim module as well does (it was CModbus; now the Linux shim). Without it the
// release build fails.
import CLinux
import Foundation
import Synchronization
import TibetTwin

/// `tibet-twin-bench TwinFeedBench`: twin feed lines per second, parsed + validated + applied, against
/// Foundation's `JSONDecoder` (and the project's generic `JSONParser`) on the same lines, in
/// the same run; from memory, a file and a TCP client; RSS during a 1M-line burst.
struct TwinFeedBench: BenchSuite {
    let name = "TwinFeedBench"

    static let devices = (0..<10).map { "dev-\($0)" }

    static func map(_ device: String, signed: Bool) -> DeviceMap {
        DeviceMap(
            device: device, profile: .port, plc: PLCEndpoint(host: "127.0.0.1"),
            limits: Limits(maxDriftMs: 200, rearmMs: 100),
            status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [0: "operational"]),
            registers: [
                RegisterSpec(name: "position_x", address: 100, type: .float32, tolerance: 0.5),
                RegisterSpec(name: "load_kg", address: 102, type: .uint32, tolerance: 100),
                RegisterSpec(name: "wind_speed", address: 104, type: .int16, scale: 0.1),
            ],
            twinKey: signed ? "k.pub" : nil, intents: [IntentSpec(name: "move_left", coil: 0)])
    }

    /// Lines as a twin sends them (the docs/twin-feed.md example shape), `count` of them round-robin over
    /// the devices, `seq` increasing, `ts` now.
    static func lines(count: Int, signedWith key: TwinSignFilter.PrivateKey? = nil) -> [[UInt8]] {
        let ts = RFC3339.format(wallNs: SystemTimeSource().now().wallNs)
        return (0..<count).map { line($0, ts: ts, signedWith: key) }
    }

    static func line(_ i: Int, ts: String, signedWith key: TwinSignFilter.PrivateKey? = nil) -> [UInt8] {
        let d = devices[i % devices.count]
        let line = #"{"device":"\#(d)","ts":"\#(ts)","seq":\#(i / devices.count + 1),"status":"operational","values":{"position_x":\#(12.5 + Double(i % 1000) / 100),"load_kg":\#(2500 + i % 700),"wind_speed":\#(Double(i % 300) / 10)},"predicted":false,"model_version":"4.2"}"#
        if let key { return try! TwinLineSigner.sign(Array(line.utf8), key: key) }
        return Array(line.utf8)
    }

    /// Writes `count` lines to a new temporary file, streaming (the bench holds no copy).
    static func writeFile(count: Int, signedWith key: TwinSignFilter.PrivateKey? = nil) -> String {
        let path = NSTemporaryDirectory() + "tibet-twin-bench-\(getpid())-\(count)-\(key == nil ? "u" : "s").jsonl"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let ts = RFC3339.format(wallNs: SystemTimeSource().now().wallNs)
        var chunk: [UInt8] = []
        for i in 0..<count {
            chunk += line(i, ts: ts, signedWith: key)
            chunk.append(0x0A)
            if chunk.count > 1 << 20 {
                _ = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                chunk.removeAll(keepingCapacity: true)
            }
        }
        _ = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        return path
    }

    /// The appliance's inbox, reduced to what matters here: the latest state per device.
    final class Latest: Sendable {
        let states = Mutex<[String: TwinState]>([:])
        let applied = Atomic<Int>(0)
        func put(_ s: TwinState) {
            states.withLock { $0[s.device] = s }
            applied.add(1, ordering: .relaxed)
        }
    }

    struct Codable_: Decodable {
        var device: String
        var ts: String
        var seq: UInt64?
        var status: String
        var values: [String: Double]
        var predicted: Bool?
        var model_version: String?
        var sig: String?
    }

    func run() async throws {
        let key = TwinSignFilter.PrivateKey()
        let unsignedMaps = Self.devices.map { Self.map($0, signed: false) }
        let signedMaps = Self.devices.map { Self.map($0, signed: true) }
        let unsignedParser = try TwinLineParser(maps: unsignedMaps, keys: [:])
        var keys: [String: TwinPublicKey] = [:]
        for d in Self.devices { keys[d] = TwinPublicKey(key.publicKey) }
        let signedParser = try TwinLineParser(maps: signedMaps, keys: keys)

        let n = 200_000
        let lines = Self.lines(count: n)
        let bytes = lines.reduce(0) { $0 + $1.count }
        out("lines: \(n) unsigned, \(bytes / n) bytes each on average; \(Self.devices.count) devices")

        // Baseline: Foundation JSONDecoder into a Codable struct (+ the RFC 3339 parse a state needs).
        let decoder = JSONDecoder()
        let datas = lines.map { Data($0) }
        var sink = 0
        let jd = measure(n) {
            for d in datas {
                if let v = try? decoder.decode(Codable_.self, from: d), let t = RFC3339.parse(v.ts) {
                    sink &+= v.values.count &+ Int(truncatingIfNeeded: t)
                }
            }
        }
        report("baseline JSONDecoder (decode only, no validation)", jd)
        let jp = measure(n) {
            for l in lines {
                if let v = try? JSONParser.parse(String(decoding: l, as: UTF8.self)), let t = v["ts"]?.stringValue.flatMap({ RFC3339.parse($0) }) {
                    sink &+= (v["values"]?.objectValue?.count ?? 0) &+ Int(truncatingIfNeeded: t)
                }
            }
        }
        report("reference JSONParser generic tree (parse only)", jp)

        var received = SystemTimeSource().now()
        let parseOnly = measure(n) {
            for l in lines {
                if case .accepted(let s, _) = unsignedParser.parse(l, received: received) { sink &+= s.values.count }
            }
        }
        report("TwinLineParser: parse + validate", parseOnly)

        let latest = Latest()
        let pipeline = TwinFeedPipeline(parser: unsignedParser) { latest.put($0) }
        let applied = measure(n) {
            for l in lines {
                l.withUnsafeBufferPointer { _ = pipeline.process($0, received: received) }
            }
        }
        report("pipeline: parse + validate + order + apply (unsigned)", applied)
        if latest.applied.load(ordering: .relaxed) != n {
            var reasons: [String: Int] = [:]
            for l in lines.prefix(1000) {
                if case .dropped(let d) = unsignedParser.parse(l, received: received) { reasons["\(d)", default: 0] += 1 }
            }
            out("  NOT ALL APPLIED: \(latest.applied.load(ordering: .relaxed)) of \(n); sample drops: \(reasons)")
        }

        let ns = 20_000
        let signedLines = Self.lines(count: ns, signedWith: key)
        // Baseline: Ed25519 verification alone, on the same lines' messages and signatures.
        let publicKey = TwinPublicKey(key.publicKey)
        let split: [([UInt8], [UInt8])] = signedLines.map { l in
            let text = String(decoding: l, as: UTF8.self)
            let r = text.range(of: #","sig":""#)!
            let sig = Base64.decode(text[r.upperBound...].dropLast(2))!
            return (Array((text[..<r.lowerBound] + "}").utf8), sig)
        }
        var valid = 0
        let rawVerify = measure(ns) {
            for (message, sig) in split where publicKey.key.isValidSignature(sig, for: message) { valid += 1 }
        }
        precondition(valid == ns)
        report("baseline Ed25519 verify alone (swift-crypto / BoringSSL)", rawVerify)

        received = SystemTimeSource().now()
        let latestS = Latest()
        let pipelineS = TwinFeedPipeline(parser: signedParser) { latestS.put($0) }
        let signed = measure(ns) {
            for l in signedLines {
                l.withUnsafeBufferPointer { _ = pipelineS.process($0, received: received) }
            }
        }
        report("pipeline: parse + verify Ed25519 + validate + apply (signed)", signed)
        if latestS.applied.load(ordering: .relaxed) != ns || !latestS.states.withLock({ $0.values.allSatisfy { $0.signature == .valid } }) {
            var reasons: [String: Int] = [:]
            for l in signedLines.prefix(1000) {
                switch signedParser.parse(l, received: received) {
                case .dropped(let d), .identityFailure(_, let d): reasons["\(d)", default: 0] += 1
                case .accepted: break
                }
            }
            out("  NOT ALL APPLIED: \(latestS.applied.load(ordering: .relaxed)) of \(ns); sample drops: \(reasons)")
        }

        // From a file, read from its start by the file source's thread; and the same bytes from
        // a TCP client thread that streams the file (so the client holds no copy in memory).
        let bigN = 1_000_000
        let big = Self.writeFile(count: bigN)
        defer { unlink(big) }
        let signedFile = Self.writeFile(count: 20_000, signedWith: key)
        defer { unlink(signedFile) }
        try fromFile(parser: unsignedParser, path: big, count: bigN)
        try await fromTCP(parser: unsignedParser, path: big, count: bigN, label: "unsigned, 1M-line burst", measureRSS: true)
        try await fromTCP(parser: signedParser, path: signedFile, count: 20_000, label: "signed, 20k lines", measureRSS: false)
        if sink == 42 { print("") }
    }

    func fromFile(parser: TwinLineParser, path: String, count: Int) throws {
        let latest = Latest()
        let pipeline = TwinFeedPipeline(parser: parser) { latest.put($0) }
        let source = TwinFileSource(path: path, fromStart: true, pipeline: pipeline)
        let t0 = now(), c0 = cpu(CLOCK_PROCESS_CPUTIME_ID)
        try source.startFollowing()
        while latest.applied.load(ordering: .relaxed) < count, now() - t0 < 120 { usleep(2000) }
        let t = now() - t0, c = cpu(CLOCK_PROCESS_CPUTIME_ID) - c0
        source.stopFollowing()
        report("file source (1M lines, from start): read + parse + validate + apply", (latest.applied.load(ordering: .relaxed), t, c))
    }

    func fromTCP(parser: TwinLineParser, path: String, count: Int, label: String, measureRSS: Bool) async throws {
        let latest = Latest()
        let pipeline = TwinFeedPipeline(parser: parser) { latest.put($0) }
        let source = TwinSocketSource(endpoint: .tcp(host: "127.0.0.1", port: 0), pipeline: pipeline)
        try await source.start()
        let port = source.localPort!
        let rssBefore = rssKiB()
        let peak = Mutex(rssBefore)
        let done = Atomic<Bool>(false)
        let sampler = Thread {
            while !done.load(ordering: .relaxed) {
                let r = rssKiB()
                peak.withLock { $0 = max($0, r) }
                usleep(5000)
            }
        }
        if measureRSS { sampler.start() }
        let t0 = now(), c0 = cpu(CLOCK_PROCESS_CPUTIME_ID)
        let writer = Thread {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            let file = open(path, O_RDONLY)
            var buf = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let n = buf.withUnsafeMutableBytes { read(file, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                var off = 0
                while off < n {
                    let w = buf.withUnsafeBytes { send(fd, $0.baseAddress! + off, n - off, Int32(MSG_NOSIGNAL)) }
                    if w <= 0 { break }
                    off += w
                }
            }
            close(file)
            close(fd)
        }
        writer.start()
        while latest.applied.load(ordering: .relaxed) < count, now() - t0 < 300 { usleep(2000) }
        let t = now() - t0, c = cpu(CLOCK_PROCESS_CPUTIME_ID) - c0
        done.store(true, ordering: .relaxed)
        await source.stop()
        report("TCP source (\(label), 1 client): read + parse + validate + apply", (latest.applied.load(ordering: .relaxed), t, c))
        if measureRSS {
            let after = rssKiB()
            out(String(format: "  RSS during the burst: before %.1f MiB, peak %.1f MiB (+%.1f MiB), after %.1f MiB",
                         Double(rssBefore) / 1024, Double(peak.withLock { $0 }) / 1024,
                         Double(peak.withLock { $0 } - rssBefore) / 1024, Double(after) / 1024))
        }
    }

    /// Runs `body` on this thread; returns the count, wall seconds and this thread's CPU seconds.
    func measure(_ count: Int, _ body: () -> Void) -> (Int, Double, Double) {
        let t0 = now(), c0 = cpu(CLOCK_THREAD_CPUTIME_ID)
        body()
        return (count, now() - t0, cpu(CLOCK_THREAD_CPUTIME_ID) - c0)
    }

    /// Lines per second of wall time and per second of CPU time: the machine is shared, so the
    /// CPU figure is the one-core rate; for sources it is the whole process's CPU (source
    /// thread, event loop, and the bench's own client thread).
    func report(_ what: String, _ r: (Int, Double, Double)) {
        let (count, seconds, cpuSeconds) = r
        let padded = what.count < 80 ? what + String(repeating: " ", count: 80 - what.count) : what
        out("  " + padded + String(format: " %9.0f lines/s wall %9.0f lines/CPU-s (%6.2f µs CPU/line)",
                                   Double(count) / seconds, Double(count) / cpuSeconds, cpuSeconds * 1e6 / Double(count)))
    }

    func cpu(_ clock: clockid_t) -> Double {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// One line of the report (through `print`, so it stays in order with the suite header).
    func out(_ s: String) {
        print(s)
    }

    func now() -> Double {
        Double(SystemTimeSource().now().monotonicNs) / 1e9
    }

    func rssKiB() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in s.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        return 0
    }
}
