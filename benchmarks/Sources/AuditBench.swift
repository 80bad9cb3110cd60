#if canImport(Glibc)
import Glibc
#endif
import Appliance
import Foundation
import Modbus
import Synchronization
import TibetTwin

/// `tibet-twin-bench AuditBench`: the audit chain on this machine's disk.
///
/// - durable tokens/s with group commit (a burst, and 16 closed-loop submitters), beside the
///   baseline of one write + fdatasync per token with the same signed lines;
/// - a permit rise's added latency (submit → durable ack), p50/p99, idle and under load, and
///   all the way to the coil: durable ack → published to the interlock server → a Modbus client
///   polling coil 0 reads the 1;
/// - that a drop is not delayed by the audit: the drop path (publish + submit) timed while
///   every fdatasync takes 50 ms (injected), and while another thread loads the disk with
///   4 MiB writes + fsync, beside the rise path under the same conditions.
struct AuditBench: BenchSuite {
    let name = "AuditBench"

    func run() async throws {
        let root = try BenchDir()
        defer { root.remove() }
        let keyPath = root.path + "/guard.key"
        try BenchDir.writeKey(to: keyPath)
        func config(_ sub: String, hooks: AuditIOHooks? = nil) -> AuditStore.Configuration {
            AuditStore.Configuration(directory: root.path + "/" + sub, keyPath: keyPath, node: "bench",
                                     segmentBytes: 64 << 20, hooks: hooks)
        }
        print("disk: \(root.path) (\(root.filesystem))")
        tokenCosts(keyPath: keyPath)

        // Baseline: one write + fdatasync per token, the same signed lines.
        let naive = try naivePerTokenSync(dir: root.path, count: 300, keyPath: keyPath)
        print(String(format: "baseline  write+fdatasync per token      %8.0f tokens/s  (%.2f ms each)", naive, 1000 / naive))

        // Group commit, open loop: a burst of 20k reporting records, time to the last ack.
        do {
            let store = try AuditStore.open(config("burst"))
            let n = 20_000
            let done = Mutex(0)
            let cpu0 = processCPUNs()
            let t0 = monotonicNs()
            for i in 0..<n {
                store.submit(benchRecord(i, .reporting)) { _ in done.withLock { $0 += 1 } }
            }
            while done.withLock({ $0 }) < n { usleep(200) }
            let dt = Double(monotonicNs() - t0) / 1e9
            let cpu = Double(processCPUNs() - cpu0) / 1e9
            let s = store.stats
            store.close()
            print(String(format: "audit     group commit, burst of %d     %8.0f tokens/s  (%llu batches, largest %d, fdatasync avg %.2f ms)",
                         n, Double(n) / dt, s.batches, s.largestBatch, Double(s.totalSyncNs) / Double(max(1, s.batches)) / 1e6))
            print(String(format: "audit     same burst per CPU-second      %8.0f tokens/s  (%.2f s CPU for %.2f s wall: the rest went to other load)",
                         Double(n) / cpu, cpu, dt))
            // And reading it back: `audit verify` over the same chain.
            let v0 = monotonicNs()
            let verdict = try AuditDirectory.verify(root.path + "/burst")
            let vdt = Double(monotonicNs() - v0) / 1e9
            if case .success(let summary) = verdict {
                print(String(format: "verify    audit verify (hash+link+sig)   %8.0f tokens/s  (%d tokens)",
                             Double(summary.tokens) / vdt, summary.tokens))
            } else {
                print("verify    FAILED: \(verdict)")
            }
        }

        // Group commit, closed loop: 16 submitters each waiting for its ack (like 16 rises).
        do {
            let store = try AuditStore.open(config("closed"))
            let perThread = 300
            let t0 = monotonicNs()
            await withTaskGroup(of: Void.self) { g in
                for t in 0..<16 {
                    g.addTask {
                        for i in 0..<perThread { _ = await store.submitAndWait(benchRecord(t * 100_000 + i, .gating)) }
                    }
                }
            }
            let dt = Double(monotonicNs() - t0) / 1e9
            store.close()
            print(String(format: "audit     group commit, 16 waiting      %8.0f tokens/s", Double(16 * perThread) / dt))
        }

        // Rise latency: one gating record at a time, idle and with a background load of
        // reporting records (~2k/s).
        for loaded in [false, true] {
            let store = try AuditStore.open(config(loaded ? "rise-loaded" : "rise"))
            let stop = Atomic<Bool>(false)
            let bg = Thread {
                var i = 0
                while !stop.load(ordering: .relaxed) {
                    store.submit(benchRecord(i, .reporting))
                    i += 1
                    usleep(500)
                }
            }
            if loaded { bg.start() }
            var lat: [Double] = []
            for i in 0..<400 {
                let t0 = monotonicNs()
                _ = await store.submitAndWait(benchRecord(i, .gating))
                lat.append(Double(monotonicNs() - t0) / 1e6)
            }
            stop.store(true, ordering: .relaxed)
            store.close()
            print(String(format: "rise      submit → durable ack%@  p50 %6.2f ms  p99 %6.2f ms  max %6.2f ms",
                         loaded ? " (+2k/s)" : "        ", pct(lat, 50), pct(lat, 99), lat.max()!))
        }

        try await riseToCoil(store: try AuditStore.open(config("coil")))

        // Drops are not delayed: the drop path is publish (an atomic store, as the guard loop
        // does) then submit; the rise path is submit, wait for the ack, then publish.
        let delayMs = Atomic<Int>(0)
        let slow = AuditIOHooks(beforeSync: { _ in
            let d = delayMs.load(ordering: .relaxed)
            if d > 0 { usleep(UInt32(d * 1000)) }
            return nil
        })
        for (label, injected, diskLoad) in [("fast disk", 0, false), ("fdatasync +50 ms", 50, false), ("disk loaded", 0, true)] {
            let store = try AuditStore.open(config("drop-\(label.filter(\.isLetter))", hooks: slow))
            delayMs.store(injected, ordering: .relaxed)
            let loader = diskLoad ? DiskLoader(dir: root.path) : nil
            loader?.start()
            let published = Atomic<Int>(0)
            var drops: [Double] = []
            var rises: [Double] = []
            for i in 0..<60 {
                // A drop: publish at once, the token follows.
                let t0 = monotonicNs()
                published.store(i, ordering: .releasing)
                store.submit(benchRecord(i, .reporting))
                drops.append(Double(monotonicNs() - t0) / 1e6)
                // A rise: the token first.
                let t1 = monotonicNs()
                _ = await store.submitAndWait(benchRecord(i, .gating))
                published.store(i, ordering: .releasing)
                rises.append(Double(monotonicNs() - t1) / 1e6)
                // More drops while that rise's fdatasync may still be in flight.
                for k in 0..<20 {
                    let t2 = monotonicNs()
                    published.store(k, ordering: .releasing)
                    store.submit(benchRecord(k, .reporting))
                    drops.append(Double(monotonicNs() - t2) / 1e6)
                }
            }
            loader?.stop()
            delayMs.store(0, ordering: .relaxed)
            store.close()
            print(String(format: "%-17@ drop path p50 %7.4f ms  p99 %7.4f ms  max %7.3f ms | rise path p50 %7.2f ms  p99 %7.2f ms",
                         label as NSString, pct(drops, 50), pct(drops, 99), drops.max()!, pct(rises, 50), pct(rises, 99)))
        }
    }

    /// A rise as the appliance shows it: the token is submitted and waited for, then the permit
    /// table is published to a real interlock server, and a libmodbus client on its own thread,
    /// reading coil 0 back to back over 127.0.0.1, sees the 1. Each round starts from a
    /// published drop the client has seen.
    func riseToCoil(store: AuditStore) async throws {
        let map = DeviceMap(device: "crane-01", profile: .port, plc: PLCEndpoint(host: "127.0.0.1"),
                            limits: Limits(maxDriftMs: 200, rearmMs: 0),
                            status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [0: "operational"]),
                            registers: [], intents: [IntentSpec(name: "move_left", coil: 0)])
        let layout = try InterlockLayout(maps: [map])
        let interlock = try InterlockServer(config: InterlockConfig(host: "127.0.0.1", port: 0), layout: layout)
        try interlock.start()
        defer { interlock.stopImmediately() }
        let blocked = PermitTable(layout: layout, heartbeat: 1, healthy: true,
                                  devices: ["crane-01": DeviceDiagnostics(reason: .audit, permits: [])])
        let permitted = PermitTable(layout: layout, heartbeat: 1, healthy: true,
                                    devices: ["crane-01": DeviceDiagnostics(reason: .ok, permits: ["move_left"])])
        interlock.publish(blocked)
        // The poller: the coil value it read last, and when it first read a 1 after a 0.
        let coil = Atomic<Int>(-1)
        let roseAt = Atomic<Int64>(0)
        let stop = Atomic<Bool>(false)
        let stopped = Atomic<Bool>(false)
        let reads = Atomic<Int>(0)
        let port = interlock.port
        let poller = Thread {
            defer { stopped.store(true, ordering: .releasing) }
            guard let client = try? ModbusClient(host: "127.0.0.1", port: port), (try? client.connect()) != nil else { return }
            defer { client.close() }
            while !stop.load(ordering: .relaxed) {
                guard let bits = try? client.readBits(table: .coil, address: 0, count: 1) else { continue }
                reads.add(1, ordering: .relaxed)
                let v = Int(bits[0])
                if v == 1 && coil.load(ordering: .relaxed) != 1 { roseAt.store(monotonicNs(), ordering: .relaxed) }
                coil.store(v, ordering: .releasing)
            }
        }
        poller.start()
        defer {
            stop.store(true, ordering: .relaxed)
            while !stopped.load(ordering: .acquiring) { usleep(1000) }
        }
        func waitFor(_ v: Int) -> Bool {
            let deadline = monotonicNs() + 5_000_000_000
            while coil.load(ordering: .acquiring) != v {
                if monotonicNs() > deadline || stopped.load(ordering: .acquiring) { return false }
                usleep(20)
            }
            return true
        }
        var toDurable: [Double] = [], durableToCoil: [Double] = [], total: [Double] = []
        for i in 0..<200 {
            interlock.publish(blocked)
            guard waitFor(0) else { print("rise→coil: the client does not read coil 0"); break }
            let t0 = monotonicNs()
            let ack = await store.submitAndWait(benchRecord(i, .gating))
            let t1 = monotonicNs()
            guard ack.isDurable else { print("rise→coil: token refused: \(ack.error!)"); break }
            interlock.publish(permitted)
            guard waitFor(1) else { print("rise→coil: the 1 never reached the client"); break }
            let t2 = roseAt.load(ordering: .relaxed)
            toDurable.append(Double(t1 - t0) / 1e6)
            durableToCoil.append(Double(t2 - t1) / 1e6)
            total.append(Double(t2 - t0) / 1e6)
        }
        store.close()
        guard !total.isEmpty else { return }
        print(String(format: "rise→coil submit → durable ack  p50 %6.2f ms  p99 %6.2f ms", pct(toDurable, 50), pct(toDurable, 99)))
        print(String(format: "rise→coil durable → client reads 1  p50 %6.3f ms  p99 %6.3f ms  (publish + one Modbus read; %d reads)",
                     pct(durableToCoil, 50), pct(durableToCoil, 99), reads.load(ordering: .relaxed)))
        print(String(format: "rise→coil submit → client reads 1  p50 %6.2f ms  p99 %6.2f ms  (%d rises)",
                     pct(total, 50), pct(total, 99), total.count))
    }

    /// CPU per token on this thread (CLOCK_THREAD_CPUTIME_ID, so other load on the machine
    /// does not count): building and hashing, signing, parsing and verifying a line.
    func tokenCosts(keyPath: String) {
        guard let keyText = try? String(contentsOfFile: keyPath, encoding: .utf8),
              let key = try? KeyText.privateKey(from: keyText) else { return }
        let n = 2000
        var chain = TokenChain(idPrefix: "cost")
        var tokens: [TibetToken] = []
        tokens.reserveCapacity(n)
        let r = benchRecord(1, .gating)
        var c0 = threadCPUNs()
        for _ in 0..<n {
            tokens.append(chain.append(action: r.action, wallNs: r.time.wallNs, actor: "jis:cost", erin: r.erin,
                                       eraan: r.eraan, eromheen: ["node": "cost", "wall_time": "2026-11-26T14:32:00.000000000Z"],
                                       erachter: r.erachter))
        }
        let build = Double(threadCPUNs() - c0) / Double(n) / 1000
        c0 = threadCPUNs()
        for i in 0..<n { try? tokens[i].sign(with: key) }
        let sign = Double(threadCPUNs() - c0) / Double(n) / 1000
        let lines = tokens.map { Array($0.line.utf8) }
        c0 = threadCPUNs()
        var v = ChainVerifier(checkSignatures: false)
        try? v.beginSegment(file: "x", number: 1)
        var ok = 0
        for (i, l) in lines.enumerated() { if (try? v.verify(line: l, number: i + 1)) != nil { ok += 1 } }
        let parse = Double(threadCPUNs() - c0) / Double(n) / 1000
        c0 = threadCPUNs()
        let pub = key.publicKey
        for t in tokens where t.hasValidSignature(by: pub) { ok += 1 }
        let verify = Double(threadCPUNs() - c0) / Double(n) / 1000
        print(String(format: "cpu/token build+hash %.1f µs, sign %.1f µs, parse+rehash+link %.1f µs, sig verify %.1f µs (line %d bytes; %d ok)",
                     build, sign, parse, verify, lines[0].count, ok))
    }

    /// Tokens/s writing each signed token with its own write + fdatasync.
    func naivePerTokenSync(dir: String, count: Int, keyPath: String) throws -> Double {
        let keyText = try String(contentsOfFile: keyPath, encoding: .utf8)
        let key = try KeyText.privateKey(from: keyText)
        let path = dir + "/naive.jsonl"
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0o640)
        defer { close(fd) }
        var chain = TokenChain(idPrefix: "naive")
        let t0 = monotonicNs()
        for i in 0..<count {
            let r = benchRecord(i, .gating)
            var t = chain.append(action: r.action, wallNs: r.time.wallNs, actor: "jis:naive", erin: r.erin, eraan: r.eraan,
                                 eromheen: ["node": "naive"], erachter: r.erachter)
            try t.sign(with: key)
            let line = Array((t.line + "\n").utf8)
            _ = line.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
            fdatasync(fd)
        }
        return Double(count) / (Double(monotonicNs() - t0) / 1e9)
    }
}

private func benchRecord(_ i: Int, _ timing: AuditRecord.Timing) -> AuditRecord {
    AuditRecord(action: .permitChanged,
                erin: ["device": "crane-01", "intent": "move_left", "allowed": .bool(timing == .gating), "reason_code": 0,
                       "reason": "Sync OK: drift=12ms, status match",
                       "delta": ["drift_ms": 12.5, "physical_age_ms": 3.25, "twin_age_ms": 40.0, "values": ["load_kg": 7.0]],
                       "i": .int(Int64(i))],
                eraan: ["jis": "jis:crane-01", "map_sha256": .string(String(repeating: "a", count: 64)), "twin_seq": .int(Int64(i))],
                erachter: ["intent": "move_left", "why": "permit change", "safety_critical": true],
                time: SystemTimeSource().now(), timing: timing)
}

private func monotonicNs() -> Int64 {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec)
}

/// CPU time of the whole process (all threads: submitters, writer, callbacks).
private func processCPUNs() -> Int64 {
    var t = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
    return Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec)
}

private func threadCPUNs() -> Int64 {
    var t = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
    return Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec)
}

private func pct(_ xs: [Double], _ p: Double) -> Double {
    let s = xs.sorted()
    return s[min(s.count - 1, Int((Double(s.count) * p / 100).rounded(.up)) - 1)]
}

/// A scratch directory on the package's disk (`.build/`), removed afterwards.
private struct BenchDir {
    let path: String

    init() throws {
        try FileManager.default.createDirectory(atPath: ".build", withIntermediateDirectories: true)
        var template = Array(".build/audit-bench-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw POSIXError(.EIO) }
        path = FileManager.default.currentDirectoryPath + "/" + String(cString: p)
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }

    /// The mount the directory is on, from /proc/mounts: device, mount point, type.
    var filesystem: String {
        guard let mounts = try? String(contentsOfFile: "/proc/mounts", encoding: .utf8) else { return "unknown filesystem" }
        var best: [Substring] = []
        for line in mounts.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count >= 3, path.hasPrefix(String(f[1])), f[1].count > (best.count > 1 ? best[1].count : -1) else { continue }
            best = f
        }
        return best.count >= 3 ? "\(best[0]) on \(best[1]) type \(best[2])" : "unknown filesystem"
    }

    /// A random Ed25519 key in `KeyText` form, mode 0600.
    static func writeKey(to path: String) throws {
        var rng = SystemRandomNumberGenerator()
        let seed = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        guard FileManager.default.createFile(atPath: path, contents: Data((Base64.encode(seed) + "\n").utf8),
                                             attributes: [.posixPermissions: 0o600]) else { throw POSIXError(.EIO) }
    }
}

/// Loads the disk: 4 MiB writes, each followed by fsync, in a loop on its own thread.
private final class DiskLoader: @unchecked Sendable {
    let path: String
    let running = Atomic<Bool>(false)
    let finished = Atomic<Bool>(false)

    init(dir: String) { path = dir + "/load.bin" }

    func start() {
        running.store(true, ordering: .relaxed)
        let t = Thread { [self] in
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            let chunk = [UInt8](repeating: 0xA5, count: 4 << 20)
            var n = 0
            while running.load(ordering: .relaxed) {
                _ = chunk.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
                fsync(fd)
                n += 1
                if n % 16 == 0 { ftruncate(fd, 0) }
            }
            close(fd)
            unlink(path)
            finished.store(true, ordering: .relaxed)
        }
        t.start()
    }

    func stop() {
        running.store(false, ordering: .relaxed)
        while !finished.load(ordering: .relaxed) { usleep(1000) }
    }
}
